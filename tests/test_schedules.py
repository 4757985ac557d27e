"""Learning-rate schedules: the rate of each step against the formula, plateau on a scripted validation history,
and the Trainer applying the rate it logs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lmcli.config import TrainConfig
from lmcli.runtime.progress import Progress
from lmcli.train.checkpoints import RunPaths, load_model
from lmcli.train.run import train
from lmcli.train.schedules import learning_rate, plateau_decays


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"lr": 0.8, "lr_decay": 2.0, **kw})


@pytest.mark.parametrize("kind, step, epoch, want", [
    ("constant", 57, 3.4, 0.8),
    ("step", 10, 0.99, 0.8), ("step", 11, 1.0, 0.4), ("step", 40, 3.5, 0.1),
    ("exponential", 10, 0.5, 0.8 / 2 ** 0.5), ("exponential", 30, 2.0, 0.2),
    ("cosine", 0, 0.0, 0.8), ("cosine", 50, 0.5, 0.4), ("cosine", 100, 1.0, 0.0), ("cosine", 150, 1.5, 0.0),
])
def test_rate_per_step_against_the_formula(kind, step, epoch, want):
    assert learning_rate(cfg(lr_schedule=kind), step, epoch, total_steps=100) == pytest.approx(want, abs=1e-12)


def test_step_schedule_every_two_epochs_warmup_and_floor():
    c = cfg(lr_schedule="step", lr_decay_every=2, warmup_steps=4, min_lr=0.15)
    assert [learning_rate(c, s, 0.0, 100) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8])
    assert learning_rate(c, 50, 1.9, 100) == pytest.approx(0.8)
    assert learning_rate(c, 50, 2.0, 100) == pytest.approx(0.4)
    assert learning_rate(c, 50, 4.5, 100) == pytest.approx(0.2)
    assert learning_rate(c, 50, 6.0, 100) == pytest.approx(0.15)  # 0.1 is below the floor


def test_cosine_after_warmup_spans_the_remaining_steps_down_to_min_lr():
    c = cfg(lr_schedule="cosine", warmup_steps=10, min_lr=0.1)
    assert learning_rate(c, 4, 0.0, 110) == pytest.approx(0.8 * 5 / 10)
    assert learning_rate(c, 10, 0.0, 110) == pytest.approx(0.8)
    assert learning_rate(c, 60, 0.0, 110) == pytest.approx(0.1 + 0.7 * 0.5)
    assert learning_rate(c, 110, 0.0, 110) == pytest.approx(0.1)


def test_plateau_on_a_scripted_validation_history():
    """Divide by F whenever an epoch-end perplexity does not beat the best so far (ties count as no progress)."""
    history = [100.0, 90.0, 95.0, 80.0, 80.0, 85.0, 70.0]
    decays, best, rates = 0, math.inf, []
    for ppl in history:
        decays = plateau_decays(decays, ppl, best)
        best = min(best, ppl)
        rates.append(learning_rate(cfg(lr_schedule="plateau"), 0, 0.0, 0, decays))
    assert rates == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.1, 0.1])


def test_trainer_applies_the_rate_it_logs(tiny_data_dir, tmp_path):
    """SGD with a step schedule whose second epoch has a rate of ~0: the weights stop moving after epoch 1, and the
    logged rates are the schedule's."""
    opts = {"model": {"embedding_dim": 6, "hidden": 8}, "data": {"batch_size": 4, "seq_len": 6},
            "train": {"optimizer": "sgd", "lr": 0.5, "lr_schedule": "step", "lr_decay": 1e9, "warmup_steps": 3,
                      "epochs": 2, "log_every": 1, "seed": 3}}
    out = train(tiny_data_dir, tmp_path / "r", opts, progress=Progress())
    per_epoch = out["steps"] // 2
    records = [json.loads(x) for x in RunPaths(tmp_path / "r").metrics.read_text().splitlines()]
    rates = [r["lr"] for r in records if r["event"] == "train"]
    c = TrainConfig(lr=0.5, lr_schedule="step", lr_decay=1e9, warmup_steps=3)
    assert rates == pytest.approx([learning_rate(c, s, (s // per_epoch) + (s % per_epoch) / per_epoch, 0)
                                   for s in range(out["steps"])])
    first = [v.numpy() for v in load_model(tmp_path / "r", str(per_epoch))[0].weights]
    last = [v.numpy() for v in load_model(tmp_path / "r", "latest")[0].weights]
    for a, b in zip(first, last):
        np.testing.assert_allclose(a, b, atol=1e-7)
    # ... and the first epoch did move them (the rate was real)
    train(tiny_data_dir, tmp_path / "init", {**opts, "train": {**opts["train"], "max_steps": 1, "lr": 1e-12}},
          progress=Progress())
    init = [v.numpy() for v in load_model(tmp_path / "init", "latest")[0].weights]
    assert max(np.abs(a - b).max() for a, b in zip(init, first)) > 1e-3
