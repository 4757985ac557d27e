"""LazyAdam against Keras Adam and a numpy reference; duplicate rows; checkpoints; no dense [V, D] work."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from lmcli.config import TrainConfig
from lmcli.runtime.errors import ConfigError
from lmcli.train.optim import LazyAdam, make_optimizer, merge_duplicate_rows

HYPER = {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-6}


def slices(indices, values, shape) -> tf.IndexedSlices:
    """An IndexedSlices gradient of a `shape` variable."""
    return tf.IndexedSlices(tf.constant(values, tf.float32), tf.constant(indices, tf.int64),
                            tf.constant(shape, tf.int64))


def setup(optimizer: keras.optimizers.Optimizer, init: np.ndarray):
    """A variable holding `init`, the built optimizer, and a tf.function applying one gradient."""
    var = keras.Variable(init.copy())
    optimizer.build([var])

    @tf.function
    def apply(grad):
        optimizer.apply([grad], [var])

    return var, apply


def moments(optimizer: keras.optimizers.Optimizer) -> list[np.ndarray]:
    """m and v (the two slots of the single variable), as numpy."""
    return [optimizer._momentums[0].numpy(), optimizer._velocities[0].numpy()]


def rng_matrix(seed: int, shape=(5, 3)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---- equality with Keras Adam ----------------------------------------------------------------------
def test_dense_gradients_match_keras_adam():
    init = rng_matrix(0)
    lazy_var, lazy_apply = setup(LazyAdam(**HYPER), init)
    adam = keras.optimizers.Adam(**HYPER)
    adam_var, adam_apply = setup(adam, init)
    for step in range(4):
        grad = tf.constant(rng_matrix(10 + step))
        lazy_apply(grad)
        adam_apply(grad)
    np.testing.assert_allclose(lazy_var.numpy(), adam_var.numpy(), rtol=1e-6, atol=0)
    assert not np.allclose(lazy_var.numpy(), init)


def test_slices_covering_every_row_once_match_keras_adam():
    init = rng_matrix(1)
    lazy = LazyAdam(**HYPER)
    lazy_var, lazy_apply = setup(lazy, init)
    adam = keras.optimizers.Adam(**HYPER)
    adam_var, adam_apply = setup(adam, init)
    order = [3, 0, 4, 1, 2]
    for step in range(4):
        dense = rng_matrix(20 + step)
        lazy_apply(slices(order, dense[order], dense.shape))
        adam_apply(tf.constant(dense))
    np.testing.assert_allclose(lazy_var.numpy(), adam_var.numpy(), rtol=1e-6, atol=0)
    for got, want in zip(moments(lazy), moments(adam)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


# ---- laziness and duplicate rows -------------------------------------------------------------------
def test_untouched_rows_and_moments_stay_unchanged():
    lazy = LazyAdam(**HYPER)
    var, apply = setup(lazy, rng_matrix(2))
    apply(tf.constant(rng_matrix(30)))  # a dense step first, so every moment is non-zero
    before = [var.numpy()] + moments(lazy)
    for step in range(3):
        apply(slices([0, 2], rng_matrix(31 + step, (2, 3)), (5, 3)))
    after = [var.numpy()] + moments(lazy)
    for old, new in zip(before, after):
        np.testing.assert_array_equal(new[[1, 3, 4]], old[[1, 3, 4]])
        assert not np.any(new[[0, 2]] == old[[0, 2]])


def test_merge_duplicate_rows_sums_repeated_indices():
    g1, g2, g3 = [1.0, 2.0], [10.0, 20.0], [-1.0, 0.5]
    merged = merge_duplicate_rows(slices([1, 1, 3], [g1, g2, g3], (4, 2)))
    assert merged.indices.numpy().tolist() == [1, 3]
    np.testing.assert_array_equal(merged.values.numpy(), [[11.0, 22.0], g3])
    dense = tf.constant([[1.0]])
    assert merge_duplicate_rows(dense) is dense


def test_rows_whose_gradient_is_exactly_zero_are_not_touched():
    """A padded position looks up row 0 with a zero gradient, and two rows can cancel: neither reaches the
    optimizer, so a lazy optimizer does not move them by their momentum (whether a row moves must not depend
    on how much padding a batch holds or how it is split over replicas)."""
    merged = merge_duplicate_rows(slices([0, 2, 3, 3], [[0.0, 0.0], [1.0, -1.0], [2.0, 1.0], [-2.0, -1.0]], (4, 2)))
    assert merged.indices.numpy().tolist() == [2]
    np.testing.assert_array_equal(merged.values.numpy(), [[1.0, -1.0]])


def test_duplicate_indices_update_like_the_summed_gradient():
    g1, g2, g3 = rng_matrix(40, (3, 3))
    repeated, summed = LazyAdam(**HYPER), LazyAdam(**HYPER)
    rep_var, rep_apply = setup(repeated, rng_matrix(3))
    sum_var, sum_apply = setup(summed, rng_matrix(3))
    for _ in range(2):
        rep_apply(slices([1, 1, 3], [g1, g2, g3], (5, 3)))
        sum_apply(slices([1, 3], [g1 + g2, g3], (5, 3)))
    np.testing.assert_array_equal(rep_var.numpy(), sum_var.numpy())
    for got, want in zip(moments(repeated), moments(summed)):
        np.testing.assert_array_equal(got, want)


# ---- numpy reference --------------------------------------------------------------------------------
def reference_step(w, m, v, t, rows, grad, learning_rate, beta_1, beta_2, epsilon):
    """One lazy Adam step in float64: only `rows` change; bias correction from the global step t."""
    w, m, v = w.copy(), m.copy(), v.copy()
    alpha = learning_rate * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
    m[rows] = beta_1 * m[rows] + (1 - beta_1) * grad
    v[rows] = beta_2 * v[rows] + (1 - beta_2) * grad**2
    w[rows] -= alpha * m[rows] / (np.sqrt(v[rows]) + epsilon)
    return w, m, v


def test_matches_numpy_reference_with_global_step_bias_correction():
    """Two hand-chosen sparse steps on a 4x3 matrix; row 1 is never touched."""
    w0 = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5], [-2.0, 1.0, 0.25], [0.75, -0.25, 1.0]])
    steps = [([2, 0], np.array([[1.0, -2.0, 0.5], [0.1, 0.0, -3.0]])),
             ([3, 2], np.array([[4.0, 0.2, -1.0], [-0.5, 1.5, 2.0]]))]  # row 3 first seen at step 2
    lazy = LazyAdam(**HYPER)
    var, apply = setup(lazy, w0.astype(np.float32))
    want = (w0, np.zeros_like(w0), np.zeros_like(w0))
    for t, (rows, grad) in enumerate(steps, start=1):
        apply(slices(rows, grad, (4, 3)))
        want = reference_step(*want, t, rows, grad, **HYPER)
    np.testing.assert_allclose(var.numpy(), want[0], rtol=1e-6, atol=1e-7)
    for got, ref in zip(moments(lazy), want[1:]):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(var.numpy()[1], w0[1].astype(np.float32))


# ---- checkpoints -------------------------------------------------------------------------------------
def sparse_grads(seed: int, count: int) -> list[tf.IndexedSlices]:
    return [slices([s % 5, (s + 2) % 5], rng_matrix(seed + s, (2, 3)), (5, 3)) for s in range(count)]


def state(var, optimizer) -> list[np.ndarray]:
    return [var.numpy(), optimizer.iterations.numpy()] + moments(optimizer)


def checkpoint_layout(path: str) -> list[tuple[str, list[int]]]:
    return [(name, shape) for name, shape in tf.train.list_variables(path) if name.startswith("optimizer/")]


def adam_checkpoint(tmp_path) -> str:
    """A checkpoint of Keras' Adam built on one (5, 3) variable, for comparing layouts."""
    adam = keras.optimizers.Adam(**HYPER)
    var = keras.Variable(np.zeros((5, 3), np.float32))
    adam.build([var])
    return tf.train.Checkpoint(optimizer=adam, weights=var).save(str(tmp_path / "adam"))


def test_checkpoint_round_trip(tmp_path):
    """iterations, m and v are saved (in the same layout as Keras' Adam) and restored exactly."""
    lazy = LazyAdam(**HYPER)
    var, apply = setup(lazy, rng_matrix(4))
    for grad in sparse_grads(50, 2):
        apply(grad)
    saved = state(var, lazy)
    path = tf.train.Checkpoint(optimizer=lazy, weights=var).save(str(tmp_path / "ckpt"))
    assert checkpoint_layout(path) == checkpoint_layout(adam_checkpoint(tmp_path))
    stored = [tf.train.load_variable(path, f"optimizer/{key}/.ATTRIBUTES/VARIABLE_VALUE")
              for key in ("_iterations", "_variables/2", "_variables/3")]
    for got, want in zip(stored, saved[1:]):
        np.testing.assert_array_equal(got, want)
    later = sparse_grads(60, 3)
    for grad in later:
        apply(grad)
    expected = state(var, lazy)

    tf.train.Checkpoint(optimizer=lazy, weights=var).restore(path).assert_consumed()
    for got, want in zip(state(var, lazy), saved):
        np.testing.assert_array_equal(got, want)
    fresh = LazyAdam(**HYPER)
    fresh_var, fresh_apply = setup(fresh, np.zeros((5, 3), np.float32))
    tf.train.Checkpoint(optimizer=fresh, weights=fresh_var).restore(path).assert_consumed()
    for grad in later:
        apply(grad)
        fresh_apply(grad)
    for restored in (state(var, lazy), state(fresh_var, fresh)):
        for got, want in zip(restored, expected):
            np.testing.assert_array_equal(got, want)


# ---- no dense [V, D] tensor on the sparse path -------------------------------------------------------
def dense_ops(optimizer: keras.optimizers.Optimizer, vocab: int = 100_000, dim: int = 64) -> list[str]:
    """Ops of the traced sparse `apply` whose output has a dimension of size `vocab`."""
    var = keras.Variable(tf.zeros((vocab, dim)))
    optimizer.build([var])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, dim], tf.float32)])
    def apply(indices, values):
        optimizer.apply([tf.IndexedSlices(values, indices, tf.constant([vocab, dim], tf.int64))], [var])

    graph = apply.get_concrete_function().graph
    return [f"{op.type}:{op.name}" for op in graph.get_operations()
            for out in op.outputs if out.shape.rank and vocab in out.shape.as_list()]


@pytest.mark.parametrize("name", ["lazy", "keras-adam"])
def test_sparse_path_materialises_no_dense_tensor(name):
    if name == "lazy":
        assert dense_ops(LazyAdam()) == []
    else:  # the check itself can fail: Keras' Adam densifies the slices
        assert dense_ops(keras.optimizers.Adam()) != []


# ---- make_optimizer -----------------------------------------------------------------------------------
def test_make_optimizer_builds_lazy_adam_and_rejects_unknown_names():
    opt = make_optimizer(dataclasses.replace(TrainConfig(), optimizer="lazy-adam", lr=0.05))
    assert isinstance(opt, LazyAdam)
    assert opt.learning_rate.numpy() == pytest.approx(0.05)
    assert LazyAdam.from_config(opt.get_config()).beta_2 == opt.beta_2
    with pytest.raises(ConfigError):
        make_optimizer(dataclasses.replace(TrainConfig(), optimizer="rmsprop"))
