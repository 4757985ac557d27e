"""Memory planned, not discovered: the estimate against measured-style arithmetic, a configuration far too large
refused before anything is allocated, an allocation failure during training as its own exit code, and a failed
start that leaves the run dir as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import tensorflow as tf
from typer.testing import CliRunner

from lmcli import memory
from lmcli.cli.main import app
from lmcli.config import LossConfig, ModelConfig, RunConfig, TrainConfig

TINY = ["--embedding-dim", "8", "--hidden", "16", "--batch-size", "4", "--seq-len", "6", "--lr", "0.02",
        "--checkpoint-every", "5", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}  # the lock records its holder


def test_parameter_count_and_estimate_parts():
    cfg = RunConfig(model=ModelConfig(vocab_size=1000, embedding_dim=10, hidden=20, layers=2, proj_dim=5),
                    loss=LossConfig(name="sampled", num_sampled=100), train=TrainConfig(optimizer="lazy-adam"))
    lstm = 4 * 20 * (10 + 20) + 80 + 4 * 20 * (20 + 20) + 80
    assert memory.parameter_count(cfg) == 1000 * 10 + lstm + 20 * 5 + 1000 * 5 + 1000
    plan = memory.estimate(cfg, available=10**12)
    assert plan.parameters == 4 * memory.parameter_count(cfg) and plan.optimizer_slots == 2 * plan.parameters
    assert plan.total == plan.runtime + plan.parameters + plan.optimizer_slots + max(plan.training_step,
                                                                                      plan.validation)
    sgd = memory.estimate(RunConfig(model=cfg.model, loss=cfg.loss, train=TrainConfig(optimizer="sgd")))
    assert sgd.optimizer_slots == 0
    half = memory.estimate(RunConfig(model=cfg.model, loss=cfg.loss,
                                     train=TrainConfig(optimizer="lazy-adam", precision="mixed-bfloat16")))
    assert half.training_step < plan.training_step and half.parameters == plan.parameters
    two = memory.estimate(cfg, replicas=2)
    assert two.training_step < plan.training_step and two.parameters == plan.parameters
    memory.check(plan)  # fits
    with pytest.raises(memory.MemoryLimitError, match="does not fit; reduce --batch-size, --seq-len, --num-sampled"):
        memory.check(memory.estimate(cfg, available=10**6))


def test_per_row_candidate_sets_add_their_noise_and_gathers_to_the_step():
    """`--candidate-sets row` draws Gumbel noise over V for each of the global batch's rows (uniform, log, sum:
    3 x rows x V floats) and gathers S rows of W per batch row (and their gradient)."""
    def step(sets, replicas=1):
        cfg = RunConfig(model=ModelConfig(vocab_size=100_000, embedding_dim=64, hidden=64),
                        loss=LossConfig(name="sampled", num_sampled=256, candidate_sets=sets),
                        train=TrainConfig(optimizer="lazy-adam")).resolved()
        return memory.estimate(cfg, replicas, available=10**12).training_step, cfg.data.batch_size

    (batch, rows), (row, _) = step("batch"), step("row")
    assert row - batch == 4 * (3 * rows * 100_000 + 2 * rows * 256 * 64)
    assert step("row", 2)[0] - step("batch", 2)[0] == 4 * (3 * rows * 100_000 + 2 * (rows // 2) * 256 * 64)


def test_a_configuration_far_too_large_exits_before_allocating_and_leaves_no_run_dir(tiny_data_dir, tmp_path):
    run = tmp_path / "run"
    r = invoke("train", tiny_data_dir, "--run-dir", run, "--hidden", 200000, "--embedding-dim", 100000, "--quiet")
    assert r.exit_code == 9, r.output
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("lmcli: error: this configuration needs about")
    assert "--batch-size" in line and "--precision" in line and "GB available" in line
    assert not run.exists()


def test_out_of_memory_in_training_is_exit_9_and_a_new_run_dir_is_removed(tiny_data_dir, tmp_path, monkeypatch):
    from lmcli import training

    real = training.Trainer._step

    def step(self, *args):
        if self.step == 3:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[4,6,16]")
        return real(self, *args)

    monkeypatch.setattr(training.Trainer, "_step", step)
    r = invoke("train", tiny_data_dir, "--run-dir", tmp_path / "run", *TINY)
    assert r.exit_code == 9, r.output
    assert r.stderr.strip().startswith("lmcli: error: out of memory at step 4; the estimate was about")
    assert not (tmp_path / "run").exists()


def test_a_failure_before_the_first_checkpoint_leaves_an_old_run_dir_untouched(tiny_data_dir, tmp_path,
                                                                               monkeypatch):
    from lmcli import training

    run = tmp_path / "run"
    assert invoke("train", tiny_data_dir, "--run-dir", run, *TINY, "--max-steps", 5).exit_code == 0
    before = snapshot(run)
    real = training.Trainer._step
    fail_at = {}

    def step(self, *args):
        if self.step == fail_at["step"]:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM")
        return real(self, *args)

    monkeypatch.setattr(training.Trainer, "_step", step)
    # resuming (next checkpoint at step 10) and starting over (at step 5): a failure before it touches nothing
    for extra, fail_at["step"] in (([], 7), (["--restart"], 3)):
        r = invoke("train", tiny_data_dir, "--run-dir", run, *TINY, "--max-steps", 12, *extra)
        assert r.exit_code == 9, r.output
        assert snapshot(run) == before, extra
    monkeypatch.setattr(training.Trainer, "_step", real)
    r = invoke("train", tiny_data_dir, "--run-dir", run, *TINY, "--max-steps", 12, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["resumed_from_step"] == 5
    assert json.loads(r.stdout)["memory"]["total"] > 0
