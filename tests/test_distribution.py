"""Data parallelism on tf.distribute: 2 logical CPU devices under `mirrored` train exactly as one device on the
same global batch, sparse gradients stay IndexedSlices through the reduction, and the pieces that see the whole
batch (TAPAS scores, learned-unigram counts, noise) do not depend on the replica count."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from lmcli.runtime.progress import Progress
from lmcli.train.checkpoints import RunPaths, load_model
from lmcli.train.run import train

STRATEGY_OPTIONS = {"full": {}, "sampled": {"num_sampled": 6},
                    "sampled-row": {"name": "sampled", "num_sampled": 6, "candidate_sets": "row"},
                    "tapas": {"num_sampled": 10, "num_resampled": 5, "sampler": "learned-unigram"}}
MIRRORED = {"distribute": "mirrored", "devices": "cpu:0,cpu:1"}


def options(loss, padding, **train_opts):
    data = {"padding": padding, "batch_size": 6 if padding == "pack" else 5, "seq_len": 5, "max_len": 6}
    return {"model": {"embedding_dim": 8, "hidden": 12, "dropout": 0.2, "embedding_dropout": 0.1},
            "data": data, "loss": {"name": loss, **STRATEGY_OPTIONS[loss]},
            "terms": {"aux_loss": ["embedding", "tar"]},
            "train": {"lr": 0.02, "seed": 9, "max_steps": 7, "log_every": 1, "checkpoint_every": 7, **train_opts}}


def losses_of(run):
    return [r["loss"] for r in map(json.loads, RunPaths(run).metrics.read_text().splitlines()) if r["event"] == "train"]


@pytest.mark.parametrize("padding", ["pack", "pad"])
@pytest.mark.parametrize("loss", sorted(STRATEGY_OPTIONS))
def test_two_replicas_train_exactly_as_one_device(tiny_data_dir, tmp_path, loss, padding):
    """The same global batch (pad: 5 rows, so one replica gets a filler row), the same steps: the same losses and
    weights to 1e-5, with dropout, word dropout, the embedding and tar terms, and TAPAS's learned counts on."""
    one = train(tiny_data_dir, tmp_path / "one", options(loss, padding, distribute="none"), progress=Progress())
    two = train(tiny_data_dir, tmp_path / "two", options(loss, padding, **MIRRORED), progress=Progress())
    assert (one["replicas"], two["replicas"], two["distribute"]) == (1, 2, "mirrored")
    assert (one["memory"]["copies"], two["memory"]["copies"]) == (1, 2)  # both replicas' copies in host memory
    np.testing.assert_allclose(losses_of(tmp_path / "two"), losses_of(tmp_path / "one"), rtol=1e-5)
    a, b = load_model(tmp_path / "one", "latest")[0], load_model(tmp_path / "two", "latest")[0]
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=0, atol=1e-5)
    assert one["valid_perplexity"] == pytest.approx(two["valid_perplexity"], rel=1e-5)


def test_sparse_gradients_reach_the_optimizer_as_indexed_slices_under_a_strategy(tiny_data_dir, tmp_path,
                                                                                monkeypatch):
    """Under mirrored, W's gradient (sampled softmax) and E's arrive at LazyAdam as IndexedSlices after the
    cross-replica sum: no V x D dense tensor per step."""
    from lmcli.train.optim import LazyAdam

    seen = []
    real = LazyAdam.update_step

    def spy(self, gradient, variable, learning_rate):
        seen.append((tuple(variable.shape), type(gradient).__name__))
        return real(self, gradient, variable, learning_rate)

    monkeypatch.setattr(LazyAdam, "update_step", spy)
    opts = options("sampled", "pack", **MIRRORED, max_steps=2)
    train(tiny_data_dir, tmp_path / "r", opts, progress=Progress())
    vocab = 16
    kinds = {kind for shape, kind in seen if shape[0] == vocab}
    assert kinds == {"IndexedSlices"}, seen  # E (V, E), W (V, D), b (V,)
    assert len([1 for shape, _ in seen if shape[0] == vocab]) >= 3


def test_pack_mode_needs_a_batch_the_replicas_share_evenly(tiny_data_dir, tmp_path):
    from lmcli.runtime.errors import ConfigError

    opts = options("full", "pack", **MIRRORED)
    opts["data"]["batch_size"] = 5
    with pytest.raises(ConfigError, match="--batch-size 5 must be a multiple of the 2 replicas in pack mode"):
        train(tiny_data_dir, tmp_path / "r", opts, progress=Progress())
    assert not (tmp_path / "r").exists()


def test_tapas_scores_and_counts_are_global_under_a_strategy():
    """Each replica's logsumexp over its rows, combined, is the logsumexp over all rows; the learned-unigram
    counts see every replica's labels."""
    from lmcli.config import LossConfig
    from lmcli.losses.samplers import make_sampler
    from lmcli.train import replicas
    from lmcli.train.distribution import make_cluster

    # the process's one mirrored strategy on these devices (a second one would reuse its collective keys)
    strategy = make_cluster("mirrored", "cpu:0,cpu:1").strategy
    rows = tf.constant(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))
    with strategy.scope():
        sampler = make_sampler(LossConfig(name="tapas", num_sampled=3, sampler="learned-unigram"), 6, None, 0)

    @tf.function
    def per_replica():
        def fn():
            r = tf.distribute.get_replica_context().replica_id_in_sync_group
            drawn = sampler.sample(tf.constant([1, 1], tf.int64) + tf.cast(r, tf.int64) * 3, tf.ones([2]),
                                   tf.constant(0, tf.int64))[0]
            mine = rows[2 * r:2 * r + 2] + 0.0 * tf.cast(drawn[0], tf.float32)  # (2, 3), after the draw
            return replicas.logsumexp(tf.reduce_logsumexp(mine, axis=0))
        return strategy.experimental_local_results(strategy.run(fn))

    got = per_replica()
    want = tf.reduce_logsumexp(rows, axis=0).numpy()
    for g in got:
        np.testing.assert_allclose(g.numpy(), want, rtol=1e-6)
    counts = [c.numpy() for c in sampler.counts.values]
    np.testing.assert_array_equal(counts[0], counts[1])
    np.testing.assert_array_equal(counts[0], [1, 3, 1, 1, 3, 1])  # ones + labels 1, 1 (replica 0) and 4, 4


def test_each_replica_copy_of_a_variable_has_a_buffer_of_its_own_and_the_same_values():
    """Under `variable_scope` the copy on cpu:1 is made in its own buffer (the allocator holds two copies right
    after creation), not in the primary's (one copy, shared until the first step's copy-on-write), and holds the
    primary's values."""
    from lmcli.train.distribution import make_cluster, variable_scope

    cluster = make_cluster("mirrored", "cpu:0,cpu:1")
    shape = (1000, 250)  # 1 MB
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    with variable_scope(cluster):
        w = tf.Variable(tf.random.uniform(shape))
    held = tf.config.experimental.get_memory_info("CPU:0")["current"] - before
    assert held >= 1.9 * np.prod(shape) * 4, held
    a, b = (c.numpy() for c in cluster.strategy.experimental_local_results(w))
    np.testing.assert_array_equal(a, b)


def test_after_a_restore_each_replica_copy_has_a_buffer_of_its_own_again(tmp_path):
    """A checkpoint restore assigns one tensor to both copies (they share it again); `own_buffers`, which a
    resumed run calls after its restore, gives the second its own, with the same values."""
    from lmcli.train.distribution import make_cluster, own_buffers, variable_scope

    cluster = make_cluster("mirrored", "cpu:0,cpu:1")
    shape = (1000, 250)
    with variable_scope(cluster):
        w = tf.Variable(tf.random.uniform(shape))
    checkpoint = tf.train.Checkpoint(w=w)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    checkpoint.restore(path)
    own_buffers(cluster.strategy, [w])
    after = tf.config.experimental.get_memory_info("CPU:0")["current"]
    assert after - before > -0.1 * np.prod(shape) * 4, (before, after)  # still two copies, not one
    a, b = (c.numpy() for c in cluster.strategy.experimental_local_results(w))
    np.testing.assert_array_equal(a, b)


def test_a_resumed_two_replica_run_gives_the_uninterrupted_weights(tiny_data_dir, tmp_path, monkeypatch):
    """Resuming under mirrored gives the replicas' copies their own buffers again (`own_buffers`, after the
    restore), with the checkpoint's values: the same weights as the uninterrupted run."""
    from lmcli.train import loop

    calls = []
    real = loop.own_buffers
    monkeypatch.setattr(loop, "own_buffers", lambda *a: (calls.append(len(a[1])), real(*a)))
    full = train(tiny_data_dir, tmp_path / "a", options("sampled", "pack", **MIRRORED), progress=Progress())
    train(tiny_data_dir, tmp_path / "b", options("sampled", "pack", **MIRRORED, max_steps=3), progress=Progress())
    resumed = train(tiny_data_dir, tmp_path / "b", options("sampled", "pack", **MIRRORED), progress=Progress())
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == full["steps"] and len(calls) == 1, calls
    a, b = load_model(tmp_path / "a", "latest")[0], load_model(tmp_path / "b", "latest")[0]
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("devices, cores, threads", [
    ("cpu:0,cpu:1", 2, 1), ("cpu:0,cpu:1", 8, 4), ("/cpu:0,/cpu:1,/cpu:2", 8, 2), ("cpu:0,cpu:1,cpu:2", 2, 1),
    ("", 8, 0), ("cpu:0", 8, 0), ("gpu:0,gpu:1", 8, 0)])
def test_logical_cpu_replicas_divide_the_cores_between_them(devices, cores, threads):
    """`--intra-op-threads 0` under several logical CPU devices: the cores divided among them, at least 1; any
    other layout keeps TensorFlow's choice (0)."""
    from lmcli.train.distribution import shared_core_threads

    assert shared_core_threads(devices, cores) == threads
