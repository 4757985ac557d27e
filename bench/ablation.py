"""Where sampled softmax's gap to the full softmax comes from: one change at a time, sampled softmax, seed 1.

Word-level WikiText-2 (train on wikitext2.valid, test on wikitext2.test, V = 12k; the data dir that `make
bench-terms` uses, and `make bench-quality` used before its baseline moved to wt2word), bench/quality.py's MODEL
(E = H = 128, Adam lr 0.002, batch 32 x 35, dropout 0.2), 4 epochs. Each variant trains through the real
`lmcli train`; the expected-count variants replace the sampler's expected counts (or its draw) in that process
before the CLI runs: they are experiments, not options.

    python bench/ablation.py [--epochs 4] [--only NAME ...] [--json]      (about 12 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import CORPORA, MODEL, ROOT, lmcli  # noqa: E402

# name -> (train flags, patch of the sampler or None)
VARIANTS = {
    "shared 1024 (the old default)": (["--num-sampled", 1024], None),
    "shared 1024, exact Q (Monte Carlo)": (["--num-sampled", 1024], "exact"),
    "shared 1024 with replacement, Q = S q": (["--num-sampled", 1024], "replacement"),
    "shared 1024, keep accidental hits": (["--num-sampled", 1024, "--keep-accidental-hits"], None),
    "shared 1024, distortion 0": (["--num-sampled", 1024, "--unigram-distortion", 0.0], None),
    "shared 1024, distortion 0.5": (["--num-sampled", 1024, "--unigram-distortion", 0.5], None),
    "shared 1024, distortion 1.0": (["--num-sampled", 1024, "--unigram-distortion", 1.0], None),
    "shared 512": (["--num-sampled", 512], None),
    "shared 2048 (the default)": ([], None),
    "shared 4096": (["--num-sampled", 4096], None),
    "row sets 256": (["--candidate-sets", "row", "--num-sampled", 256], None),
    "row sets 1024": (["--candidate-sets", "row", "--num-sampled", 1024], None),
}


def exact_expected(log_q: np.ndarray, k: int, approx: np.ndarray, draws: int = 4000, seed: int = 0) -> np.ndarray:
    """Inclusion frequencies of Gumbel-top-k draws without replacement (the exact Q, up to Monte Carlo error);
    classes drawn fewer than 20 times (a noisy frequency) keep the approximation."""
    rng, hits = np.random.default_rng(seed), np.zeros(len(log_q))
    for _ in range(draws // 200):
        keys = log_q[None, :] - np.log(-np.log(rng.random((200, len(log_q)))))  # (200, V)
        np.add.at(hits, np.argpartition(-keys, k, axis=1)[:, :k].ravel(), 1.0)
    return np.where(hits < 20, approx, hits / draws)


def patch(kind: str) -> None:
    """Replace the unigram sampler's expected counts (exact) or its draw (with replacement) in this process."""
    import tensorflow as tf

    from lmcli.losses import samplers

    init = samplers.Sampler.__init__

    def patched(self, q, num_sampled, seed):
        init(self, q, num_sampled, seed)
        log_q = self.log_q.numpy().astype(np.float64)
        if kind == "exact":
            self.expected = tf.constant(exact_expected(log_q, num_sampled, self.expected.numpy()), tf.float32)
        else:  # with replacement: S independent draws, expected count S q (duplicates stay)
            self.expected = tf.constant(np.maximum(num_sampled * np.exp(log_q), 1e-30), tf.float32)
            self._draw = lambda lq, step: tf.cast(tf.random.stateless_categorical(
                lq[None, :], num_sampled, seed=self._key(step))[0], tf.int64)  # (S,)

    samplers.Sampler.__init__ = patched


def child(kind: str, args: list[str]) -> None:
    """`lmcli train ARGS` in this process, with the sampler patched."""
    if kind != "none":
        patch(kind)
    sys.argv = ["lmcli", *args]
    runpy.run_module("lmcli", run_name="__main__")


def run(name: str, data: Path, out: Path, epochs: int) -> dict:
    flags, kind = VARIANTS[name]
    run_dir = out / "ablation" / "".join(c if c.isalnum() else "-" for c in name)
    args = ["train", data, "--run-dir", run_dir, "--restart", "--loss", "sampled", "--epochs", epochs, *flags,
            *MODEL, "--seed", 1, "--json", "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, __file__, "--child", kind or "none", "--", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"{name}: train failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    trained = json.loads(proc.stdout.strip().splitlines()[-1])
    ev = lmcli("eval", run_dir, "--split", "test", "--checkpoint", "latest")
    row = {"variant": name, "test_perplexity": ev["perplexity"], "top1": ev["top1"], "top5": ev["top5"],
           "train_seconds": trained["seconds"]}
    print(f"{name:<40} test ppl {ev['perplexity']:8.2f}  top1 {ev['top1']:.3f}  top5 {ev['top5']:.3f}  "
          f"train {trained['seconds']:6.1f} s", flush=True)
    return row


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[4:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=12000)
    p.add_argument("--only", nargs="*", default=None, help="variant names (default: all)")
    p.add_argument("--out", default=str(ROOT / "bench-quality"))
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if not (CORPORA / "wikitext2.valid.txt").exists():
        print(f"ablation: {CORPORA} not found; nothing to do")
        return
    out = Path(a.out)
    data = out / "data"
    if not (data / "manifest.json").exists():
        lmcli("prepare", CORPORA / "wikitext2.valid.txt", "--test", CORPORA / "wikitext2.test.txt", "--out", data,
              "--vocab-size", a.vocab_size, "--model-type", "word", "--force")
    rows = [run(name, data, out, a.epochs) for name in (a.only or VARIANTS)]
    print("\n| variant | test ppl | top-1 | top-5 | train s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['test_perplexity']:.2f} | {r['top1']:.3f} | {r['top5']:.3f} | "
              f"{r['train_seconds']:.0f} |")
    if a.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
