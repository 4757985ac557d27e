"""GPU check (`make gpu-check`): the GPU-only tests, a speed table and the cuDNN kernel confirmed from a training log.

    python bench/gpu_check.py [--out gpu-check] [--vocabs 32000,100000,800000] [--precisions float32,mixed-bfloat16]
                              [--steps 20] [--budget 420]

Without a visible GPU it prints one line and exits 0. With one it runs, in order:
1. `pytest tests/test_gpu.py` (the cuDNN LSTM kernel in training, left padding converted, mixed precision);
2. tokens/s and the GPU allocator's peak for full, sampled and TAPAS at each vocabulary and precision, on one GPU
   and, when there are several, on all of them (mirrored), E = H = 512, global batch 32 x 35, each in a fresh
   process (bench/scale.py's child); rows that would start after `--budget` seconds are skipped, not guessed;
3. a short `lmcli train` on sample_data/, whose log must say `LSTM kernel: cudnn`.
It writes OUT/gpu_check.md (the table) and OUT/gpu_check.json (every figure) and exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import scale  # noqa: E402 (bench/ is not a package)

LOSSES = ("full", "sampled", "tapas")
GB = 1e9


def gpu_count() -> int:
    """Visible GPUs, asked in a child process so that this one never initialises the devices."""
    code = "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


def run_tests() -> dict:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "test_gpu.py")],
                         capture_output=True, text=True, cwd=ROOT)
    return {"passed": out.returncode == 0, "summary": (out.stdout.strip().splitlines() or [""])[-1]}


def speed_table(vocabs: list[int], precisions: list[str], replica_counts: list[int], steps: int,
                deadline: float) -> list[dict]:
    rows = []
    for replicas in replica_counts:
        for precision in precisions:
            for vocab in vocabs:
                for loss in LOSSES:
                    if time.monotonic() > deadline:
                        rows.append({"loss": loss, "vocab": vocab, "precision": precision, "replicas": replicas,
                                     "error": "skipped: over the time budget"})
                        continue
                    r = scale.child(loss, vocab, steps, replicas, precision, device="gpu", timeout=240)
                    rows.append({"loss": loss, "vocab": vocab, "precision": precision, "replicas": replicas, **r})
                    print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    head = f"| {r['loss']} | {r['vocab']} | {r['precision']} | {r['replicas']} |"
    if "error" in r:
        return f"{head} {r['error']} | | |"
    gpu = f"{r['gpu_peak_bytes'] / GB:.2f}" if r.get("gpu_peak_bytes") else "?"
    return f"{head} {r['tokens_per_s']:.0f} | {gpu} | {r['estimate'] / GB:.2f} |"


def cudnn_from_log() -> dict:
    """A 5-step training on sample_data/; the kernel named in its log."""
    with tempfile.TemporaryDirectory() as tmp:
        cli = [sys.executable, "-m", "lmcli"]
        prep = subprocess.run([*cli, "prepare", str(ROOT / "sample_data" / "corpus.txt"), "--out", f"{tmp}/data",
                               "--vocab-size", "500", "--quiet"], capture_output=True, text=True, cwd=ROOT)
        if prep.returncode != 0:
            return {"confirmed": False, "log": prep.stderr.strip()[-300:]}
        run = subprocess.run([*cli, "train", f"{tmp}/data", "--run-dir", f"{tmp}/run", "--max-steps", "5",
                              "--hidden", "128", "--embedding-dim", "64"], capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in (run.stdout + run.stderr).splitlines() if "LSTM kernel" in ln]
    kernel = re.sub(r".*LSTM kernel:\s*", "", lines[0]) if lines else "(no kernel line in the log)"
    return {"confirmed": run.returncode == 0 and kernel.startswith("cudnn"), "kernel": kernel,
            "exit_code": run.returncode}


def write(out: Path, report: dict) -> None:
    """OUT/gpu_check.md and OUT/gpu_check.json, each written to a temporary name and renamed."""
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# lmcli GPU check ({report['gpus']} GPU{'s' * (report['gpus'] > 1)})", "",
          f"- tests/test_gpu.py: {report['tests']['summary']}",
          f"- cuDNN from the training log: {report['cudnn']['kernel']} "
          f"({'confirmed' if report['cudnn']['confirmed'] else 'NOT confirmed'})", "",
          "E = H = 512, global batch 32 x 35; peak = the first GPU's allocator peak; estimate = lmcli's plan.", "",
          "| loss | V | precision | GPUs | tokens/s | peak GB | estimate GB |", "|---|---|---|---|---|---|---|",
          *(_line(r) for r in report["speed"])]
    for name, text in (("gpu_check.md", "\n".join(md) + "\n"), ("gpu_check.json", json.dumps(report, indent=2))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu-check")
    p.add_argument("--vocabs", default="32000,100000,800000")
    p.add_argument("--precisions", default="float32,mixed-bfloat16")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--budget", type=float, default=420.0, help="seconds after which no new speed row starts")
    a = p.parse_args()
    start = time.monotonic()
    gpus = gpu_count()
    if gpus == 0:
        print("gpu-check: no GPU visible here; nothing was run (run `make gpu-check` on a machine with a GPU)")
        return 0
    report = {"gpus": gpus, "tests": run_tests()}
    print(f"tests/test_gpu.py: {report['tests']['summary']}", flush=True)
    report["speed"] = speed_table([int(v) for v in a.vocabs.split(",")], a.precisions.split(","),
                                  [1] + ([gpus] if gpus > 1 else []), a.steps, start + a.budget)
    report["cudnn"] = cudnn_from_log()
    print(f"cuDNN from the training log: {report['cudnn']}", flush=True)
    report["seconds"] = time.monotonic() - start
    write(Path(a.out), report)
    print(f"wrote {a.out}/gpu_check.md and {a.out}/gpu_check.json ({report['seconds']:.0f} s)")
    ok = report["tests"]["passed"] and report["cudnn"]["confirmed"]
    return 0 if ok and not any("error" in r and "skipped" not in r["error"] for r in report["speed"]) else 1


if __name__ == "__main__":
    sys.exit(main())
