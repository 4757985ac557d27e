"""Scale: sampled softmax as the vocabulary grows, on one device and on two replicas (tokens/s and peak memory).

    python bench/scale.py [--vocabs 32000,200000,800000] [--steps 10] [--intra-op-threads N] [--system-allocator]
                          [--json]

E = H = 512, batch 32 x 35 (the global batch), Zipf-distributed ids, lmcli's own training step
(`lmcli.train.step.build_training_step`, the optimizer lmcli picks: lazy-adam for sampled, adam for full). Each
measurement runs in a fresh process, so its peak resident memory is its own. Two replicas are two logical CPU
devices of the same two cores under MirroredStrategy, on the same global batch: the ratio is the strategy's
overhead, not a speed-up. "overhead" is the peak minus the replicas' copies of the parameters and optimizer slots;
issue 15's targets are checked at the end:

- flat in V: with 2 replicas, tokens/s at the largest V >= 0.85 x tokens/s at the smallest;
- bounded overhead: 2 replicas >= 0.8 x one replica, at every V;
- memory: the 2-replica peak <= 2 x (parameters + slots) + the one-device overhead, at every V.

`--system-allocator` runs every process with TensorFlow's oneDNN CPU allocator handing all sizes to glibc's malloc
(`TF_ONEDNN_USE_SYSTEM_ALLOCATOR=true`; by default all but the smallest go to its BFC allocator, whose regions carry
one 8-byte chunk handle per 256 bytes) with glibc kept from returning freed memory to the system between
steps (SYSTEM_MALLOC below). It is a measurement of the alternative, not lmcli's setting; TensorFlow keeps no
allocator statistics then, so the allocator's columns and target are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GB = 1e9
NAN = float("nan")
# --system-allocator: every tensor through malloc; freed memory kept for the next step (no trim, a 32 MB mmap
# threshold, one arena), so that a step's temporaries are not mapped and faulted in anew each time.
SYSTEM_MALLOC = {"TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "true", "MALLOC_MMAP_THRESHOLD_": "33554432",
                 "MALLOC_TRIM_THRESHOLD_": "4294967296", "MALLOC_TOP_PAD_": "67108864", "MALLOC_ARENA_MAX": "1"}


def measure(loss: str, vocab: int, steps: int, replicas: int = 1, precision: str = "float32", dim: int = 512,
            batch: int = 32, optimizer: str = "auto", device: str = "cpu", threads: int = 0) -> dict:
    """One configuration, in this process (called by the child): tokens/s (best of 2 rounds of `steps`), the
    process's peak RSS (and, on GPUs, the first GPU's allocator peak) and lmcli's memory estimate for it.
    `device` cpu: replicas are logical CPU devices; gpu: replicas are the first `replicas` GPUs. `threads`: the
    intra-op thread count (`lmcli train --intra-op-threads`; 0 = lmcli's default: TensorFlow's choice on one device,
    the cores divided among several logical CPU devices)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, os.path.join(HERE, ".."))
    from lmcli.runtime.tfsetup import set_intra_op_threads
    from lmcli.train.distribution import configure_cpu_devices, make_cluster, shared_core_threads

    devices = ",".join(f"{device}:{i}" for i in range(replicas))
    threads = threads or shared_core_threads(devices if replicas > 1 else "")
    set_intra_op_threads(threads)
    configure_cpu_devices(devices)
    import numpy as np
    import tensorflow as tf

    from lmcli.config import DataConfig, LossConfig, ModelConfig, RunConfig, TrainConfig
    from lmcli.train import memory
    from lmcli.train.distribution import replica_feeds
    from lmcli.train.step import build_training_step

    cfg = RunConfig(model=ModelConfig(vocab_size=vocab, embedding_dim=dim, hidden=dim),
                    data=DataConfig(batch_size=batch, seq_len=35), loss=LossConfig(name=loss, candidate_sets="batch"),
                    train=TrainConfig(precision=precision, optimizer=optimizer, clip_norm=1.0)).resolved()
    cluster = make_cluster("mirrored" if replicas > 1 else "none", devices if replicas > 1 else "")
    probs = 1.0 / np.arange(1, vocab + 1) ** 1.05
    baseline = _rss()  # the runtime before anything of the run is built
    built = build_training_step(cfg, cluster, (1e6 * probs).astype(np.int64), total_steps=1000)
    built_rss = _rss()  # the variables and the optimizer's slots, and whatever building them left resident
    rng = np.random.default_rng(0)
    batches = [rng.choice(vocab, size=(batch, 36), p=probs / probs.sum()).astype(np.int32) for _ in range(4)]
    state = built.model.zero_state(batch)

    def run(i):
        ids = batches[i % 4]
        arrays = {"inputs": ids[:, :-1], "labels": ids[:, 1:], "mask": np.ones((batch, 35), np.float32)}
        return built.run(replica_feeds(cluster, arrays, state, i, 0.0))

    float(run(0)["loss"]), float(run(1)["loss"])  # trace, warm up
    whole_peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] if device == "cpu" else None
    if device == "cpu":
        tf.config.experimental.reset_memory_stats("CPU:0")  # from here: the steady steps alone
    best = 0.0
    for r in range(2):
        start = time.perf_counter()
        for i in range(steps):
            out = run(2 + r * steps + i)
        float(out["loss"])
        best = max(best, steps * batch * 35 / (time.perf_counter() - start))
    plan = memory.plan_for(cfg, cluster.replicas, cluster.devices)
    gpu_peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] if device == "gpu" else None
    steps_peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] if device == "cpu" else None
    tensors_peak = (max(whole_peak, steps_peak) or None) if device == "cpu" else None  # None: no statistics
    return {"loss": loss, "vocab": vocab, "replicas": replicas, "precision": precision, "dim": dim, "batch": batch,
            "optimizer": cfg.train.optimizer, "device": device, "threads": threads, "tokens_per_s": best,
            "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "gpu_peak_bytes": gpu_peak,
            "tensors_peak_bytes": tensors_peak, "steps_peak_bytes": steps_peak, "baseline_bytes": baseline,
            "built_bytes": built_rss,
            "parameters_and_slots": plan.parameters + plan.optimizer_slots, "estimate": plan.training}


def _rss() -> int:
    """This process's resident memory now, in bytes (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _clean_env() -> dict:
    """The child's environment: the machine's basics only, so that nothing a caller set (a test runner, a job
    script) changes what is measured."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH")
    return {k: os.environ[k] for k in keep if k in os.environ} | {"TF_CPP_MIN_LOG_LEVEL": "3"}


def child(loss: str, vocab: int, steps: int, replicas: int = 1, precision: str = "float32", dim: int = 512,
          batch: int = 32, optimizer: str = "auto", device: str = "cpu", timeout: float = 900,
          threads: int = 0, system_allocator: bool = False) -> dict:
    """`measure` in a fresh process; {"error": ...} when that process fails (out of memory, say) or times out.
    `system_allocator`: the process runs with SYSTEM_MALLOC's environment."""
    args = [loss, vocab, steps, replicas, precision, dim, batch, optimizer, device, threads]
    try:
        out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True,
                             timeout=timeout, env=_clean_env() | (SYSTEM_MALLOC if system_allocator else {}))
    except subprocess.TimeoutExpired:
        return {"error": f"no result in {timeout:.0f} s", "vocab": vocab, "replicas": replicas}
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}: {(out.stderr.strip().splitlines() or [''])[-1][:200]}",
                "vocab": vocab, "replicas": replicas}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(vocab: int, one: dict, two: dict) -> str:
    if "error" in one or "error" in two:
        return f"{vocab:>8}  {one.get('error', '')} {two.get('error', '')}"
    ps = one["parameters_and_slots"]
    over1, over2 = one["peak_bytes"] - ps, two["peak_bytes"] - 2 * ps
    t1, t2 = (one["tensors_peak_bytes"] or NAN) - ps, (two["tensors_peak_bytes"] or NAN) - 2 * ps
    return (f"{vocab:>8} {one['tokens_per_s']:9.0f} {one['peak_bytes'] / GB:7.2f} {two['tokens_per_s']:9.0f} "
            f"{two['peak_bytes'] / GB:7.2f} {two['tokens_per_s'] / one['tokens_per_s']:6.2f} {ps / GB:8.2f} "
            f"{over1 / GB:7.2f} {over2 / GB:7.2f} {t1 / GB:7.2f} {t2 / GB:7.2f} {one['estimate'] / GB:7.2f} "
            f"{two['estimate'] / GB:7.2f}")


def targets(rows: list[tuple[dict, dict]]) -> list[tuple[str, bool]]:
    """Issue 15's three targets on the measured rows: (description with figures, met)."""
    rows = [(a, b) for a, b in rows if "error" not in a and "error" not in b]
    if not rows:
        return []
    (_, first), (_, last) = rows[0], rows[-1]
    flat = last["tokens_per_s"] / first["tokens_per_s"]
    out = [(f"flat in V (2 replicas): {last['vocab']} vs {first['vocab']}: {flat:.2f} (>= 0.85)", flat >= 0.85)]
    for one, two in rows:
        ratio = two["tokens_per_s"] / one["tokens_per_s"]
        out.append((f"V = {one['vocab']}: 2 replicas / 1 replica = {ratio:.2f} (>= 0.80)", ratio >= 0.8))
        ps = one["parameters_and_slots"]
        bound = 2 * ps + one["peak_bytes"] - ps
        out.append((f"V = {one['vocab']}: 2-replica peak RSS {two['peak_bytes'] / GB:.2f} GB <= 2 x params+slots + "
                    f"one-device overhead = {bound / GB:.2f} GB", two["peak_bytes"] <= bound))
        if not one["tensors_peak_bytes"] or not two["tensors_peak_bytes"]:
            continue  # no allocator statistics (--system-allocator)
        tensors = 2 * ps + one["tensors_peak_bytes"] - ps
        out.append((f"V = {one['vocab']}: 2-replica peak of TensorFlow's allocator {two['tensors_peak_bytes'] / GB:.2f}"
                    f" GB <= 2 x params+slots + one-device overhead = {tensors / GB:.2f} GB",
                    two["tensors_peak_bytes"] <= tensors))
    return out


def _excess(rows: list[tuple[dict, dict]]) -> list[str]:
    """Where the 2-replica RSS exceeds its bound: after building the variables and slots (RSS then, against the
    one-device RSS then plus one more p+s), and in the steps after (the rest of the peak's excess)."""
    out = []
    for one, two in rows:
        if "error" in one or "error" in two or "built_bytes" not in one:
            continue
        ps = one["parameters_and_slots"]
        at_build = two["built_bytes"] - (one["built_bytes"] + ps)
        total = two["peak_bytes"] - (one["peak_bytes"] + ps)
        out.append(f"  V = {one['vocab']}: 2-replica RSS - bound = {total / GB:+.2f} GB: {at_build / GB:+.2f} after "
                   f"building the variables and slots, {(total - at_build) / GB:+.2f} in the steps")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocabs", default="32000,200000,800000")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="threads one op may use (lmcli train --intra-op-threads); 0 = lmcli train's default")
    p.add_argument("--system-allocator", action="store_true",
                   help="measure with every tensor through glibc's malloc instead of TensorFlow's BFC (see above)")
    p.add_argument("--child", nargs=10, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        loss, vocab, steps, replicas, precision, dim, batch, optimizer, device, threads = a.child
        print(json.dumps(measure(loss, int(vocab), int(steps), int(replicas), precision, int(dim), int(batch),
                                 optimizer, device, int(threads))))
        return
    print("sampled softmax (2048 candidates), E = H = 512, global batch 32 x 35, lazy-adam; one process each; "
          "2 replicas = 2 logical CPU devices on the same 2 cores; intra-op threads: "
          f"{a.intra_op_threads or 'lmcli train default (1 replica: one per core; 2 replicas: cores / 2 each)'}"
          + ("; every tensor through glibc's malloc (--system-allocator)" if a.system_allocator else ""), flush=True)
    print("GB: peak RSS; p+s: one copy of parameters and slots; over: peak RSS - copies x p+s; t-over: the same from "
          "the peak of TensorFlow's CPU allocator (live tensors and variables, no runtime, no allocator cache); est: "
          "lmcli's memory plan for the training steps", flush=True)
    print(f"{'V':>8} {'1r tok/s':>9} {'1r GB':>7} {'2r tok/s':>9} {'2r GB':>7} {'2r/1r':>6} {'p+s GB':>8} "
          f"{'over 1r':>7} {'over 2r':>7} {'t-over1':>7} {'t-over2':>7} {'est 1r':>7} {'est 2r':>7}", flush=True)
    def pair(loss: str, vocab: int) -> tuple[dict, dict]:
        return tuple(child(loss, vocab, a.steps, r, threads=a.intra_op_threads, system_allocator=a.system_allocator)
                     for r in (1, 2))

    rows = []
    for vocab in [int(v) for v in a.vocabs.split(",")]:
        rows.append(pair("sampled", vocab))
        print(_row(vocab, *rows[-1]), flush=True)
    floor = pair("full", 1000)
    print(_row(1000, *floor) + "   <- the backbone alone (full softmax, V = 1000: the output layer is negligible)",
          flush=True)
    print("\nissue 15 targets:")
    checks = targets(rows)
    for text, met in checks:
        print(f"  {'met    ' if met else 'NOT met'}  {text}")
    for line in _excess(rows):
        print(line)
    if "error" not in floor[0] and "error" not in floor[1]:
        base = floor[1]["tokens_per_s"] / floor[0]["tokens_per_s"]
        extra = (floor[1]["peak_bytes"] - 2 * floor[0]["parameters_and_slots"]) - (
            floor[0]["peak_bytes"] - floor[0]["parameters_and_slots"])
        print(f"  the backbone alone: 2 replicas / 1 replica = {base:.2f}; 2-replica overhead - one-device overhead = "
              f"{extra / GB:.2f} GB (the LSTM alone: what no output layer can remove)")
    full = pair("full", 32000)
    if "error" not in full[0] and "error" not in full[1]:
        print(f"\nfull softmax, V = 32000: 1 replica {full[0]['tokens_per_s']:.0f} tokens/s, 2 replicas "
              f"{full[1]['tokens_per_s']:.0f} ({full[1]['tokens_per_s'] / full[0]['tokens_per_s']:.2f}x)")
    if a.json:
        print(json.dumps({"sampled": [{"one": o, "two": t} for o, t in rows], "full": list(full), "floor": list(floor),
                          "targets": [{"target": t, "met": m} for t, m in checks]}))


if __name__ == "__main__":
    main()
