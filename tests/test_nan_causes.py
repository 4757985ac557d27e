"""The NaN error names the likely causes for the strategy and options in use: the resampling temperature for TAPAS
below 0.3 (at the step that went bad, on its schedule), the learning rate and clipping otherwise."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from lmcli import losses
from lmcli.cli.main import app
from lmcli.config import LossConfig, RunConfig, TrainConfig
from lmcli.train.nan_causes import likely_causes, non_finite_message


def run(loss=None, **train) -> RunConfig:
    return RunConfig(loss=loss or LossConfig(), train=TrainConfig(**train))


def tapas(start, final=0.0) -> LossConfig:
    return LossConfig(name="tapas", num_sampled=8, num_resampled=4, resampling_temperature=start,
                      final_resampling_temperature=final, temperature_decay="linear")


@pytest.mark.parametrize("cfg, step, names_temperature", [
    (run(tapas(0.02)), 17, True),
    (run(tapas(0.29)), 1, True),
    (run(tapas(0.3)), 1, False),
    (run(tapas(1.0)), 206, False),
    (run(tapas(1.0, final=0.01)), 11, False),  # annealed linearly over 100 steps: T = 0.901 at step 11
    (run(tapas(1.0, final=0.01)), 91, True),  # T = 0.109 at step 91
    (run(LossConfig(name="sampled", num_sampled=8, resampling_temperature=0.01)), 5, False),  # not tapas: unused
])
def test_tapas_below_0_3_names_the_temperature_and_other_runs_the_learning_rate(cfg, step, names_temperature):
    causes = likely_causes(cfg, step, total_steps=100)
    assert ("--resampling-temperature" in causes) == names_temperature
    assert ("--lr" in causes and "--clip-norm" in causes) == (not names_temperature)


def test_the_temperature_named_is_the_one_on_the_schedule_at_that_step():
    causes = likely_causes(run(tapas(1.0, final=0.01)), 91, total_steps=100)
    assert "was 0.109 at that step" in causes and "--final-resampling-temperature" in causes
    assert "was 0.02 at" in likely_causes(run(tapas(0.02)), 17, 100)
    assert "--final-resampling-temperature" not in likely_causes(run(tapas(0.02)), 17, 100)


def test_the_learning_rate_advice_says_what_is_set():
    assert "--lr (now 0.003)" in likely_causes(run(lr=0.003), 3, 10)
    assert "smaller --clip-norm (now 2)" in likely_causes(run(clip_norm=2.0), 3, 10)
    assert "clipping is off" in likely_causes(run(clip_norm=0.0), 3, 10)
    assert "--precision" not in likely_causes(run(), 3, 10)
    assert "--precision mixed-bfloat16" in likely_causes(run(precision="mixed-float16"), 3, 10)
    line = non_finite_message(float("nan"), 7, 1, -1, run(), 10)
    assert line.startswith("the loss became nan at step 7 (epoch 1); no checkpoint was written yet; try a lower")
    assert "\n" not in line and line.endswith("then rerun to resume")


def test_a_tapas_run_that_turns_nan_at_a_low_temperature_is_told_so(tiny_data_dir, tmp_path, monkeypatch):
    """Through the CLI: exit 7, one line, the temperature named and the learning rate not."""
    real = losses.STRATEGIES["tapas"]

    def poisoned(inputs, cfg, ctx):
        out = real.fn(inputs, cfg, ctx)
        bad = tf.cond(inputs.clock.step >= 2, lambda: out.losses * np.nan, lambda: out.losses)
        return dataclasses.replace(out, losses=bad)

    monkeypatch.setitem(losses.STRATEGIES, "tapas", dataclasses.replace(real, fn=poisoned))
    r = CliRunner().invoke(app, ["train", str(tiny_data_dir), "--run-dir", str(tmp_path / "run"), "--loss", "tapas",
                                 "--num-sampled", "8", "--num-resampled", "4", "--resampling-temperature", "0.05",
                                 "--embedding-dim", "8", "--hidden", "16", "--batch-size", "4", "--seq-len", "6",
                                 "--max-steps", "6", "--quiet"])
    assert r.exit_code == 7, r.output
    line = r.stderr.strip()
    assert "\n" not in line and "at step 3" in line and "temperature was 0.05" in line and "--lr" not in line
