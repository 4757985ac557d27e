"""Training throughput of each loss strategy (and of each loss term on top), measured side by side in one process.

    python bench/train_speed.py --vocab 32000 --steps 10 --json
    python bench/train_speed.py --vocab 100000 --strategies sampled --extras embedding,ar,tar,variational

E = H = 512, batch 32 x 35, Zipf-distributed random ids. "floor" is the same model with no output layer (a loss
on the hidden states alone, lazy-adam): the cost any output layer adds to. Every configuration is built first,
then timed in interleaved rounds (A B C A B C ...) and its best round kept, so that a slow spell of a noisy
machine hits every configuration alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lmcli.runtime.tfsetup import import_tensorflow  # noqa: E402

import_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lmcli import losses  # noqa: E402
from lmcli.config import LossConfig, ModelConfig, RunConfig, TermsConfig, TrainConfig  # noqa: E402
from lmcli.model import build_model  # noqa: E402
from lmcli.train.objective import Objective  # noqa: E402
from lmcli.train.optim import make_optimizer  # noqa: E402
from lmcli.train.step import NEVER_LABELS  # noqa: E402

LOSSES = {  # name -> (--loss, other loss options): sampled 2048 shared, tapas 2048 -> 1024 resample (the defaults)
    "full": ("full", {}),
    "sampled": ("sampled", {"candidate_sets": "batch"}),
    "sampled-row": ("sampled", {"candidate_sets": "row", "num_sampled": 256}),
    "sampled-1024": ("sampled", {"num_sampled": 1024, "candidate_sets": "batch"}),
    "tapas": ("tapas", {}),
    "floor": ("full", {}),
}
STRATEGIES = tuple(LOSSES)
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
                     loss=LossConfig(name=LOSSES[name][0], **LOSSES[name][1]),
                     terms=TermsConfig(**EXTRAS.get(extra, {}).get("terms", {})),
                     train=TrainConfig(optimizer="lazy-adam" if name == "floor" else "auto")).resolved()


class Runner:
    """One configuration, built and warmed up; `time(steps)` gives its training tokens/s over `steps` steps."""

    def __init__(self, name: str, vocab: int, batch: int, seq: int, dim: int, extra: str = "", seed: int = 0):
        keras.utils.set_random_seed(seed)
        cfg = run_config(name, vocab, dim, extra)
        self.model = build_model(cfg.model)
        counts = (1e6 / np.arange(1, vocab + 1) ** 1.05).astype(np.int64)
        objective = floor_objective if name == "floor" else Objective.for_run(cfg, counts,
                                                                             self.model.extras_provided, NEVER_LABELS)
        self.model.compile(make_optimizer(cfg.train), objective, clip_norm=1.0, seed=seed, total_steps=1000)
        self.step_fn = tf.function(self.model.train_step)
        rng = np.random.default_rng(seed)
        self.batches = [zipf_ids(rng, vocab, (batch, seq + 1)) for _ in range(4)]
        self.state, self.tokens, self.i = self.model.zero_state(batch), batch * seq, 0
        self.time(2)  # trace + warm up

    def _run(self):
        ids = self.batches[self.i % len(self.batches)]
        self.i += 1
        return self.step_fn({"inputs": ids[:, :-1], "labels": ids[:, 1:],
                             "mask": np.ones(ids[:, 1:].shape, np.float32), "state": self.state,
                             "step": tf.constant(self.i, tf.int64)})

    def time(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            out = self._run()
        float(out["loss"])
        return steps * self.tokens / (time.perf_counter() - start)


def measure_all(runs: list[tuple[str, str]], vocab: int, steps: int, batch: int, seq: int, dim: int,
                rounds: int) -> dict[str, float]:
    """{'name' or 'name+extra': best tokens/s over `rounds` interleaved rounds of `steps` steps}."""
    runners = {(f"{n}+{e}" if e else n): Runner(n, vocab, batch, seq, dim, e) for n, e in runs}
    best = {key: 0.0 for key in runners}
    for _ in range(rounds):
        for key, runner in runners.items():
            best[key] = max(best[key], runner.time(steps))
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=35)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--extras", default="", help=f"comma list of {', '.join(EXTRAS)}: each measured on top of "
                   "each strategy, as 'strategy+extra'")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    names = [n for n in a.strategies.split(",") if n in LOSSES]
    runs = [(n, "") for n in names] + [(n, e) for e in a.extras.split(",") if e for n in names if n != "floor"]
    rates = measure_all(runs, a.vocab, a.steps, a.batch, a.seq_len, a.dim, a.rounds)
    result = {"vocab": a.vocab, "steps": a.steps, "rounds": a.rounds, "batch": a.batch, "seq_len": a.seq_len,
              "dim": a.dim, "tokens_per_s": rates}
    if a.json:
        print(json.dumps(result))
    else:
        for key, rate in rates.items():
            print(f"{key:>20}: {rate:10.0f} tokens/s", flush=True)
    return result


if __name__ == "__main__":
    main()
