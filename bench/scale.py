"""Scale: sampled softmax as the vocabulary grows (tokens/s and peak memory), and the cost of tf.distribute on one
machine (1 vs 2 replicas on logical CPU devices).

    python bench/scale.py [--vocabs 32000,100000,800000] [--steps 10] [--json]

E = H = 512, batch 32 x 35, Zipf-distributed ids, lmcli's own distributed step (`lmcli.distribution`), the
optimizer lmcli picks (lazy-adam for sampled, adam for full). Each measurement runs in a fresh process, so its
peak resident memory is its own; "overhead" is that peak minus the parameters and optimizer slots, which should
not grow with V. Replica rows: the same global batch on one device and split over two logical CPU devices of the
same two cores (so the ratio is the strategy's overhead, not a speed-up).
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


def measure(loss: str, vocab: int, steps: int, replicas: int, precision: str) -> dict:
    """One configuration, in this process (called by the child)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, os.path.join(HERE, ".."))
    from lmcli.distribution import configure_cpu_devices, make_cluster

    devices = ",".join(f"cpu:{i}" for i in range(replicas))
    configure_cpu_devices(devices)
    import keras
    import numpy as np

    from lmcli import memory
    from lmcli.config import LossConfig, ModelConfig, RunConfig, TrainConfig
    from lmcli.distribution import make_step, replica_feeds
    from lmcli.model import build_model
    from lmcli.objective import Objective
    from lmcli.optim import make_optimizer

    cfg = RunConfig(model=ModelConfig(vocab_size=vocab, embedding_dim=512, hidden=512),
                    loss=LossConfig(name=loss),
                    train=TrainConfig(precision=precision)).resolved()
    cluster = make_cluster("mirrored" if replicas > 1 else "none", devices if replicas > 1 else "")
    keras.utils.set_random_seed(0)
    with cluster.strategy.scope():
        model = build_model(cfg.model, precision)
        optimizer = make_optimizer(cfg.train)
        optimizer.build(model.trainable_variables)
        counts = (1e6 / np.arange(1, vocab + 1) ** 1.05).astype(np.int64)
        model.compile(optimizer, Objective.for_run(cfg, counts, model.extras_provided), clip_norm=1.0,
                      total_steps=1000)
    step = make_step(cluster, model.train_step, {"loss", "strategy_loss", "tokens"})
    rng = np.random.default_rng(0)
    probs = 1.0 / np.arange(1, vocab + 1) ** 1.05
    batches = [rng.choice(vocab, size=(32, 36), p=probs / probs.sum()).astype(np.int32) for _ in range(4)]
    state = model.zero_state(32)

    def run(i):
        ids = batches[i % 4]
        arrays = {"inputs": ids[:, :-1], "labels": ids[:, 1:], "mask": np.ones((32, 35), np.float32)}
        return step(replica_feeds(cluster, arrays, state, i, 0.0))

    float(run(0)["loss"]), float(run(1)["loss"])  # trace, warm up
    best = 0.0
    for r in range(2):
        start = time.perf_counter()
        for i in range(steps):
            out = run(2 + r * steps + i)
        float(out["loss"])
        best = max(best, steps * 32 * 35 / (time.perf_counter() - start))
    plan = memory.estimate(cfg, replicas=replicas)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"loss": loss, "vocab": vocab, "replicas": replicas, "precision": precision, "tokens_per_s": best,
            "peak_bytes": peak, "parameters_and_slots": plan.parameters + plan.optimizer_slots,
            "estimate_training": plan.runtime + plan.parameters + plan.optimizer_slots + plan.training_step}


def child(loss: str, vocab: int, steps: int, replicas: int = 1, precision: str = "float32") -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", loss, str(vocab), str(steps), str(replicas),
                          precision], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocabs", default="32000,100000,800000")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        loss, vocab, steps, replicas, precision = a.child
        print(json.dumps(measure(loss, int(vocab), int(steps), int(replicas), precision)))
        return
    report = {"vocab": [], "replicas": []}
    print("sampled softmax (2048 candidates, the default) by vocabulary, E = H = 512, batch 32 x 35, one process "
          "each", flush=True)
    print(f"{'V':>8} {'tokens/s':>9} {'vs first':>8} {'peak GB':>8} {'params+slots GB':>15} {'overhead GB':>11}"
          f" {'estimate GB':>11}", flush=True)
    for vocab in [int(v) for v in a.vocabs.split(",")]:
        r = child("sampled", vocab, a.steps)
        report["vocab"].append(r)
        first = report["vocab"][0]["tokens_per_s"]
        print(f"{vocab:>8} {r['tokens_per_s']:9.0f} {r['tokens_per_s'] / first:8.2f} {r['peak_bytes'] / GB:8.2f} "
              f"{r['parameters_and_slots'] / GB:15.2f} {(r['peak_bytes'] - r['parameters_and_slots']) / GB:11.2f}"
              f" {r['estimate_training'] / GB:11.2f}", flush=True)
    print("\none device vs two logical CPU devices (mirrored) on the same 2 cores, V = 32k", flush=True)
    for loss in ("full", "sampled"):
        one, two = child(loss, 32000, a.steps, 1), child(loss, 32000, a.steps, 2)
        report["replicas"].append({"loss": loss, "one": one, "two": two})
        print(f"{loss:>8}: 1 replica {one['tokens_per_s']:7.0f} tokens/s, 2 replicas {two['tokens_per_s']:7.0f} "
              f"({two['tokens_per_s'] / one['tokens_per_s']:.2f}x)", flush=True)
    if a.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
