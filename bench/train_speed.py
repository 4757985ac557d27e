"""Training throughput of each loss strategy on one model, measured side by side in one process.

    python bench/train_speed.py --vocab 32000 --steps 10 --json

E = H = 512, batch 32 x 35, Zipf-distributed random ids. "floor" is the same model with no output layer
(a loss on the hidden states alone, lazy-adam): the cost any output layer adds to.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lmcli.tfsetup import import_tensorflow  # noqa: E402

import_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lmcli import losses  # noqa: E402
from lmcli.config import LossConfig, ModelConfig, RunConfig, TermsConfig, TrainConfig  # noqa: E402
from lmcli.model import build_model  # noqa: E402
from lmcli.objective import Objective  # noqa: E402
from lmcli.optim import make_optimizer  # noqa: E402

STRATEGIES = ("full", "sampled", "tapas", "floor")
LOSS_OPTIONS = {"sampled": {"num_sampled": 1024}, "tapas": {"num_sampled": 2048, "num_resampled": 1024}}
EXTRAS = {  # --extras: one loss term or embedding regulariser at a time, on top of the strategy
    "embedding": {"terms": {"aux_loss": ("embedding",)}},
    "ar": {"terms": {"aux_loss": ("ar",)}},
    "tar": {"terms": {"aux_loss": ("tar",)}},
    "variational": {"model": {"variational_embedding": True}},
    "word-dropout": {"model": {"embedding_dropout": 0.1}},
}


def floor_objective(inputs, count=None, replicas=1):
    """No output layer: a loss on the hidden states alone, so only embedding + LSTM train."""
    loss = losses.masked_mean(tf.reduce_mean(tf.square(inputs.hidden), axis=-1), inputs.mask, count)
    return loss, {"loss": loss}, {}


def zipf_ids(rng, vocab, shape):
    probs = 1.0 / np.arange(1, vocab + 1) ** 1.05
    return rng.choice(vocab, size=shape, p=probs / probs.sum()).astype(np.int32)


def run_config(name: str, vocab: int, dim: int, extra: str = "") -> RunConfig:
    """The run config of a strategy, plus one loss term or embedding regulariser (`EXTRAS`) when `extra`."""
    model = ModelConfig(vocab_size=vocab, embedding_dim=dim, hidden=dim, **EXTRAS.get(extra, {}).get("model", {}))
    # The optimizer lmcli picks: adam for full, lazy-adam for sampled/tapas. The floor uses lazy-adam too, so
    # that its embedding update is row-sparse as in the sampled runs and only the output layer is missing.
    return RunConfig(model=model,
                     loss=LossConfig(name="full" if name == "floor" else name, **LOSS_OPTIONS.get(name, {})),
                     terms=TermsConfig(**EXTRAS.get(extra, {}).get("terms", {})),
                     train=TrainConfig(optimizer="lazy-adam" if name == "floor" else "auto")).resolved()


def measure(name: str, vocab: int, steps: int, batch: int, seq: int, dim: int, seed: int = 0,
            extra: str = "") -> float:
    """Training tokens/s of strategy `name` (with `extra` on), after two warm-up steps."""
    keras.utils.set_random_seed(seed)
    cfg = run_config(name, vocab, dim, extra)
    model = build_model(cfg.model)
    counts = (1e6 / np.arange(1, vocab + 1) ** 1.05).astype(np.int64)
    objective = floor_objective if name == "floor" else Objective.for_run(cfg, counts, model.extras_provided)
    optimizer = make_optimizer(cfg.train)
    model.compile(optimizer, objective, clip_norm=1.0, seed=seed, total_steps=steps)
    step_fn = tf.function(model.train_step)
    rng = np.random.default_rng(seed)
    batches = [zipf_ids(rng, vocab, (batch, seq + 1)) for _ in range(4)]
    state = model.zero_state(batch)

    def run(i):
        ids = batches[i % len(batches)]
        return step_fn({"inputs": ids[:, :-1], "labels": ids[:, 1:], "mask": np.ones((batch, seq), np.float32),
                        "state": state, "step": tf.constant(i, tf.int64)})

    for i in range(2):  # trace + warm up
        float(run(i)["loss"])
    start = time.perf_counter()
    for i in range(steps):
        out = run(i)
    float(out["loss"])
    return steps * batch * seq / (time.perf_counter() - start)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=35)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--extras", default="", help=f"comma list of {', '.join(EXTRAS)}: each measured on top of "
                   "each strategy, as 'strategy+extra'")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    names = [n for n in a.strategies.split(",") if n == "floor" or n in losses.STRATEGIES]
    runs = [(n, "") for n in names] + [(n, e) for e in a.extras.split(",") if e for n in names if n != "floor"]
    result = {"vocab": a.vocab, "steps": a.steps, "batch": a.batch, "seq_len": a.seq_len, "dim": a.dim,
              "tokens_per_s": {}}
    for name, extra in runs:
        key = f"{name}+{extra}" if extra else name
        result["tokens_per_s"][key] = measure(name, a.vocab, a.steps, a.batch, a.seq_len, a.dim, extra=extra)
        if not a.json:
            print(f"{key:>20}: {result['tokens_per_s'][key]:10.0f} tokens/s", flush=True)
    if a.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
