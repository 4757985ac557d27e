"""Intra-op threads: training tokens/s with one thread per core (TensorFlow's default) and with
`--intra-op-threads 1`, side by side, one fresh process each (bench/scale.py's child).

    python bench/threads.py [--steps 10] [--rounds 1] [--json]

E = H = 512, global batch 32 x 35, lmcli's own training step: sampled softmax (2048 shared candidates) at V = 32k
and 200k, the full softmax at V = 32k, and the backbone alone (full softmax, V = 1000) on one device, and sampled
and full at 32k on two replicas (logical CPU devices of the same cores, where `lmcli train`'s 0 divides the cores
among the replicas: 1 each on 2 cores). Each round measures the two settings one after the other for every row, so
slow and quiet spells of the machine fall on both; a row's figure is its best round.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale  # noqa: E402

ROWS = (("sampled", 32000, 1), ("sampled", 200000, 1), ("full", 32000, 1), ("full", 1000, 1), ("sampled", 32000, 2),
        ("full", 32000, 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"training tokens/s ({cores} cores), E = H = 512, global batch 32 x 35: intra-op threads one per core "
          "(TensorFlow's default) vs 1", flush=True)
    print(f"{'loss':>8} {'V':>7} {'replicas':>8} {'per core':>8} {'1 thread':>8} {'ratio':>6}", flush=True)
    report = []
    for loss, vocab, replicas in ROWS:
        best = {cores: 0.0, 1: 0.0}
        for _ in range(a.rounds):
            for threads in best:  # explicit counts: 0 would be lmcli's own choice under two replicas
                r = scale.child(loss, vocab, a.steps, replicas, threads=threads)
                best[threads] = max(best[threads], r.get("tokens_per_s", 0.0))
        ratio = best[1] / best[cores] if best[cores] and best[1] else None
        report.append({"loss": loss, "vocab": vocab, "replicas": replicas,
                       "tokens_per_s": {"per_core": best[cores], "one": best[1]}, "one_over_per_core": ratio})
        print(f"{loss:>8} {vocab:>7} {replicas:>8} {best[cores]:8.0f} {best[1]:8.0f} "
              f"{'-' if ratio is None else format(ratio, '.2f'):>6}"
              + ("   <- the backbone alone" if vocab == 1000 else ""), flush=True)
    if a.json:
        print(json.dumps({"rows": report}))


if __name__ == "__main__":
    main()
