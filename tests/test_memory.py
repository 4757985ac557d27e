"""Memory planned, not discovered: the estimate against measured-style arithmetic, a configuration far too large
refused before anything is allocated, an allocation failure during training as its own exit code, and a failed
start that leaves the run dir as it was."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from typer.testing import CliRunner

from lmcli.cli.main import app
from lmcli.config import LossConfig, ModelConfig, RunConfig, TrainConfig
from lmcli.train import memory

TINY = ["--embedding-dim", "8", "--hidden", "16", "--batch-size", "4", "--seq-len", "6", "--lr", "0.02",
        "--checkpoint-every", "5", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}  # the lock records its holder


BAND = (0.85, 1.25)  # measured growth over the runtime / the plan's, as the README states


@pytest.mark.parametrize("cfg", [
    ModelConfig(vocab_size=1000, embedding_dim=10, hidden=20, layers=2, proj_dim=5),
    ModelConfig(vocab_size=500, embedding_dim=12, hidden=12, tie_embeddings=True, variational_embedding=True)])
def test_parameter_count_is_the_built_models(cfg):
    from lmcli.model import build_model

    run = RunConfig(model=cfg)
    assert memory.parameter_count(run) == sum(int(np.prod(w.shape)) for w in build_model(cfg).weights)


def test_the_plan_counts_every_replica_copy_and_fits_or_refuses():
    cfg = RunConfig(model=ModelConfig(vocab_size=1000, embedding_dim=10, hidden=20),
                    loss=LossConfig(name="sampled", num_sampled=100), train=TrainConfig(optimizer="lazy-adam"))
    one, two = memory.estimate(cfg, available=10**12), memory.estimate(cfg, 2, copies=2)
    assert two.training - one.training >= one.parameters + one.optimizer_slots  # a second copy of each, at least
    assert two.validation == one.validation  # validation runs on one device, on the whole batch
    assert "2 x" in two.describe() and "host memory" in one.describe()
    memory.check(one)  # fits
    with pytest.raises(memory.MemoryLimitError, match="does not fit; reduce --batch-size, --seq-len, --num-sampled"):
        memory.check(memory.estimate(cfg, available=10**6))


def test_host_memory_counts_the_allocators_chunk_table_and_a_gpu_does_not():
    """In host memory every tensor byte costs 1/32 more (the CPU allocator's 8-byte handle per 256 bytes of its
    regions), each replica's copy included; a GPU's plan has no such term (that table is in the host's memory)."""
    cfg = RunConfig(model=ModelConfig(vocab_size=50_000, embedding_dim=64, hidden=64),
                    loss=LossConfig(name="sampled", num_sampled=100), train=TrainConfig(optimizer="lazy-adam"))
    for copies in (1, 2):
        host, gpu = memory.estimate(cfg, copies, copies=copies), memory.estimate(cfg, copies, copies=copies,
                                                                                  where="GPU:0")
        p, s, t, val = host.parameters, host.optimizer_slots, host.training_step, host.validation
        tensors = copies * (p + s) + max(copies * t, val)
        assert (host.allocator, gpu.allocator) == (tensors // 32, 0)
        assert (host.total, gpu.total) == (memory.RUNTIME + tensors + tensors // 32, memory.RUNTIME + tensors)
        steps = copies * (p + s + t)
        assert (host.training, gpu.training) == (memory.RUNTIME + steps + steps // 32, memory.RUNTIME + steps)
        assert f"allocator {host.allocator / 1e9:.2f}" in host.describe() and "allocator" not in gpu.describe()


def test_placement_puts_each_logical_cpu_replica_in_the_host_and_one_copy_on_each_gpu(monkeypatch):
    assert memory.placement(["/job:localhost/replica:0/task:0/device:CPU:0", "/device:CPU:1"]).copies == 2
    assert memory.placement([]).where == "host memory"
    monkeypatch.setattr(memory, "gpu_memory", lambda: {"GPU:0": 80 * 10**9, "GPU:1": 40 * 10**9})
    place = memory.placement(["/job:localhost/replica:0/task:0/device:GPU:0", "/device:GPU:1"])
    assert (place.copies, place.available, place.where) == (1, 40 * 10**9, "GPU:0, GPU:1")


PEAK_CONFIGS = [  # loss, V, steps, replicas, precision, E = H, batch, optimizer
    ("sampled", 100_000, 3, 1, "float32", 256, 16, "auto"),
    ("full", 100_000, 3, 1, "float32", 256, 16, "auto"),
    ("sampled", 100_000, 3, 2, "float32", 256, 16, "auto"),
]


def test_the_estimate_is_within_the_stated_band_of_measured_peaks():
    """Three runs of lmcli's training step, each in a fresh process (bench/scale.py's child): one device with
    sampled and with full softmax, and two replicas on logical CPU devices. In each, the peak RSS above the
    process's RSS before the run is built (TensorFlow's runtime) is 85% to 125% of the plan's parameters, slots and
    steps (`MemoryPlan.training` less its runtime), and that runtime is within the plan's runtime figure."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    import scale

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda c: scale.child(*c), PEAK_CONFIGS))
    for config, run in zip(PEAK_CONFIGS, runs):
        assert "error" not in run, (config, run)
        ratio = (run["peak_bytes"] - run["baseline_bytes"]) / (run["estimate"] - memory.RUNTIME)
        assert BAND[0] <= ratio <= BAND[1], (config, run, ratio)
        assert run["baseline_bytes"] <= memory.RUNTIME, (config, run)


def test_per_row_candidate_sets_add_their_draws_and_gathers_to_the_step():
    """`--candidate-sets row` plans K = 2 x S columns per row (a fixed sampler's draws, repeats included): the
    (N, 1 + K) logits and gradient, K rows of W gathered per batch row and their gradient, the global rows' (rows, K)
    uniforms; the learned-unigram sampler draws S per row with Gumbel noise over V for every global row (3 x rows x
    V floats). A shared set: (N, 1 + S) logits and S gathered rows."""
    def step(sets, replicas=1, sampler="unigram"):
        cfg = RunConfig(model=ModelConfig(vocab_size=100_000, embedding_dim=64, hidden=64),
                        loss=LossConfig(name="sampled", num_sampled=256, candidate_sets=sets, sampler=sampler),
                        train=TrainConfig(optimizer="lazy-adam")).resolved()
        return memory.estimate(cfg, replicas, available=10**12).training_step, cfg.data

    (batch, data), (row, _) = step("batch"), step("row")
    rows, s, k, d = data.batch_size, 256, 512, 64
    n = rows * data.seq_len
    shared = 4 * n * (s + 1) + 2 * s * d
    assert row - batch == 4 * (4 * n * (k + 1) + 2 * rows * k * d + 4 * rows * k - shared)
    two = 4 * (4 * (n // 2) * (k + 1) + 2 * (rows // 2) * k * d + 4 * rows * k - (4 * (n // 2) * (s + 1) + 2 * s * d))
    assert step("row", 2)[0] - step("batch", 2)[0] == two
    learned = step("row", sampler="learned-unigram")[0] - batch
    assert learned == 4 * (4 * n * (s + 1) + 2 * rows * s * d + 4 * rows * s + 3 * rows * 100_000 - shared)


def test_a_configuration_far_too_large_exits_before_allocating_and_leaves_no_run_dir(tiny_data_dir, tmp_path):
    run = tmp_path / "run"
    r = invoke("train", tiny_data_dir, "--run-dir", run, "--hidden", 200000, "--embedding-dim", 100000, "--quiet")
    assert r.exit_code == 9, r.output
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("lmcli: error: this configuration needs about")
    assert "--batch-size" in line and "--precision" in line and "GB available" in line
    assert not run.exists()


def test_out_of_memory_in_training_is_exit_9_and_a_new_run_dir_is_removed(tiny_data_dir, tmp_path, monkeypatch):
    from lmcli.train import run as training

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
    from lmcli.train import run as training

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


def test_auto_candidate_sets_fall_back_to_one_shared_set_when_per_row_sets_do_not_fit():
    """`--candidate-sets auto` resolves to per-row sets for sampled softmax; when their plan does not fit and one
    shared set's does, the run takes the shared set and says so; an explicit `row`, or nothing fitting, is kept
    (and refused by the memory check as before)."""
    from lmcli.train.run import affordable

    base = RunConfig(model=ModelConfig(vocab_size=50_000, embedding_dim=512, hidden=512),
                     loss=LossConfig(name="sampled", num_sampled=4096), train=TrainConfig()).resolved()
    assert base.loss.candidate_sets == "row"
    needs = {s: memory.estimate(dataclasses.replace(base, loss=dataclasses.replace(base.loss, candidate_sets=s)))
             .total for s in ("row", "batch")}
    assert needs["row"] > needs["batch"]

    def plan_fn(available):
        return lambda cfg: memory.estimate(cfg, available=available)

    between = (needs["row"] + needs["batch"]) // 2
    cfg, plan, note = affordable(base, True, plan_fn(between))
    assert cfg.loss.candidate_sets == "batch" and memory.fits(plan) and "one set shared" in note
    assert affordable(base, False, plan_fn(between))[0].loss.candidate_sets == "row"  # asked for explicitly
    assert affordable(base, True, plan_fn(needs["batch"] - 1))[0].loss.candidate_sets == "row"  # neither fits
    assert affordable(base, True, plan_fn(needs["row"]))[2] == ""  # row fits: kept


@pytest.mark.parametrize("asked", ["auto", "row"])
def test_a_run_whose_per_row_sets_do_not_fit_trains_with_one_shared_set_only_when_left_to_auto(
        tiny_data_dir, tmp_path, monkeypatch, asked):
    """The run itself, with the host's memory set between the shared set's plan and the per-row sets': `auto` (the
    default) trains with one shared set (the per-row plan would be refused) and saves it; an explicit `row` is
    refused before anything is written (exit 9)."""
    from lmcli.data.shards import open_data_dir
    from lmcli.train.checkpoints import RunPaths
    from lmcli.train.run import resolve_config

    loss = ["--loss", "sampled", "--num-sampled", "8"]
    given = {"model": {"embedding_dim": 8, "hidden": 16}, "data": {"batch_size": 4, "seq_len": 6},
             "loss": {"name": "sampled", "num_sampled": 8}}
    cfg, _ = resolve_config(open_data_dir(tiny_data_dir), RunPaths(tmp_path / "probe"), given, False)
    needs = {s: memory.plan_for(dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, candidate_sets=s)), 1,
                                []).total for s in ("row", "batch")}
    assert needs["row"] > needs["batch"]
    monkeypatch.setattr(memory, "available_bytes", lambda: (needs["row"] + needs["batch"]) // 2)
    run = tmp_path / asked
    result = invoke("train", tiny_data_dir, "--run-dir", run, *TINY, *loss, "--candidate-sets", asked,
                    "--max-steps", "2", "--json")
    if asked == "row":
        assert result.exit_code == 9 and not run.exists(), result.output
        return
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["loss"]["candidate_sets"] == "batch"
