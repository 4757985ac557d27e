"""Optimizers and gradient hygiene shared by every strategy.

How Keras 3.15 (TF backend) optimizers treat a `tf.IndexedSlices` gradient (measured by tracing
`optimizer.apply` on a [V, D] variable and listing the ops that output a [V, D] tensor):

- SGD without momentum stays sparse: `lr * grad` keeps the slices and `assign_sub` becomes one
  `ResourceScatterSub`; repeated indices add up, which is exact for a linear update.
- SGD with momentum densifies: `m * momentum - lr * grad` turns the slices into a dense [V, D]
  tensor, so every step reads and rewrites all of m and of the variable (correct arithmetic, V x D cost).
- Adagrad writes sparsely (`ResourceScatterAdd` on the accumulator, `ResourceScatterSub` on the
  variable) but still computes dense [V, D] `sqrt(acc + eps)` and zero/NaN checks of it every step;
  it squares each slice separately, so a repeated index adds g1^2 + g2^2 instead of (g1 + g2)^2.
- Adam densifies: `grad - m` converts the slices to a dense [V, D] tensor, so all of m, v and the
  variable are rewritten every step; `square(grad)` is taken on the slices before that, so v also
  gets g1^2 + g2^2 for a repeated index. `LazyAdam` below fixes both.

`merge_duplicate_rows`, applied by the model to every gradient, removes the repeated-index error for
all of them; only `LazyAdam` removes the dense V x D work of Adam.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from lmcli.config import TrainConfig
from lmcli.runtime.errors import ConfigError
from lmcli.train.replicas import local


def merge_duplicate_rows(grad):
    """Sum the rows of an IndexedSlices gradient that share an index, and drop the rows whose sum is exactly
    zero; other gradients pass through.

    Embedding lookups and sampled losses produce repeated indices; optimizers that square or accumulate per-row
    statistics must see (g1 + g2), not g1 and g2 separately. Padding positions look up rows too, with a zero
    gradient: a lazy optimizer would still "touch" those rows (move them by their momentum), so whether a row
    moves would depend on how much padding a batch holds, or how a batch is split over replicas.
    """
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    unique, position = tf.unique(grad.indices)  # (U,), (K,)
    values = tf.math.unsorted_segment_sum(grad.values, position, tf.shape(unique)[0])  # (U, D)
    nonzero = tf.reduce_any(tf.not_equal(tf.reshape(values, [tf.shape(values)[0], -1]), 0), axis=1)  # (U,)
    return tf.IndexedSlices(tf.boolean_mask(values, nonzero), tf.boolean_mask(unique, nonzero), grad.dense_shape)


def _native(variable, like=None) -> tf.Variable:
    """The tf.Variable behind a Keras variable (the TF backend passes either to `update_step`); for a mirrored slot,
    its copy on the device of `like` (the variable being updated), so that gathers read only their rows."""
    return local(variable.value if isinstance(variable, keras.Variable) else variable, like)


class LazyAdam(keras.optimizers.Optimizer):
    """Adam that updates only the rows a sparse gradient touches.

    A dense gradient gets exactly the update of `keras.optimizers.Adam` (same defaults, same
    bias correction, same order of float operations). An IndexedSlices gradient first has its
    repeated indices summed, then only its rows of m, v and the variable are gathered, updated
    and scattered back; untouched rows keep their values and their moments do not decay. The bias
    correction uses the optimizer's global step, not a per-row count (as TF Addons' LazyAdam).
    No [V, D] tensor is materialised on the sparse path.

    Args:
        learning_rate: A float, a `keras.optimizers.schedules.LearningRateSchedule` or a callable.
        beta_1: Decay rate of the first-moment estimates.
        beta_2: Decay rate of the second-moment estimates.
        epsilon: Added to sqrt(v) ("epsilon hat" of Kingma and Ba, as in Keras' Adam).
        name: Optimizer name.
        **kwargs: Forwarded to `keras.optimizers.Optimizer` (clipnorm, weight_decay, ...).
    """

    def __init__(self, learning_rate=0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, name: str = "lazy_adam", **kwargs) -> None:
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon

    def build(self, var_list) -> None:
        """Create one first-moment and one second-moment slot per variable, both zeros."""
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, ["momentum", "velocity"])

    def update_step(self, gradient, variable, learning_rate) -> None:
        """Apply one Adam step for `gradient` (dense or IndexedSlices) to `variable`."""
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1_power = tf.pow(tf.cast(self.beta_1, dtype), step)
        beta_2_power = tf.pow(tf.cast(self.beta_2, dtype), step)
        alpha = tf.cast(learning_rate, dtype) * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        if isinstance(gradient, tf.IndexedSlices):
            variable = _native(variable)
            self._sparse_step(merge_duplicate_rows(gradient), variable, _native(m, variable), _native(v, variable),
                              alpha)
        else:
            self._dense_step(tf.cast(gradient, dtype), variable, m, v, alpha)

    def _dense_step(self, grad: tf.Tensor, variable, m, v, alpha: tf.Tensor) -> None:
        """The Keras Adam update on every row."""
        self.assign_add(m, (grad - m) * (1 - self.beta_1))  # (V, D)
        self.assign_add(v, (tf.square(grad) - v) * (1 - self.beta_2))  # (V, D)
        self.assign_sub(variable, (m * alpha) / (tf.sqrt(v) + self.epsilon))  # (V, D)

    def _sparse_step(self, grad: tf.IndexedSlices, variable: tf.Variable, m: tf.Variable,
                     v: tf.Variable, alpha: tf.Tensor) -> None:
        """The same update on the rows of `grad` (unique indices) only, through gather and scatter."""
        rows = grad.indices  # (U,)
        values = tf.cast(grad.values, variable.dtype)  # (U, D)
        m_rows = tf.gather(m, rows)  # (U, D)
        v_rows = tf.gather(v, rows)  # (U, D)
        m_rows = m_rows + (values - m_rows) * (1 - self.beta_1)  # (U, D)
        v_rows = v_rows + (tf.square(values) - v_rows) * (1 - self.beta_2)  # (U, D)
        step = (m_rows * alpha) / (tf.sqrt(v_rows) + self.epsilon)  # (U, D)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(step, rows))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config


def _unscaled(grad, scale):
    """grad / scale, IndexedSlices kept sparse."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values / tf.cast(scale, grad.values.dtype), grad.indices, grad.dense_shape)
    return grad / tf.cast(scale, grad.dtype)


class SparseLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' dynamic loss scaling (for float16), with IndexedSlices gradients kept sparse.

    Keras' own LossScaleOptimizer divides each gradient by the scale and checks it for inf/NaN with dense ops,
    which turns a [V, D] IndexedSlices into a dense [V, D] tensor every step. Here both read only the slices'
    values; the scale's schedule is Keras' (halve on a non-finite step, which is skipped; double after
    `dynamic_growth_steps` finite ones).
    """

    def check_finite(self, grads) -> tf.Tensor:
        values = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads if g is not None]
        return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in values]))

    def _stateful_handle_finite_grads(self, grads, trainable_variables) -> None:
        scale = self.dynamic_scale
        self.inner_optimizer.apply([None if g is None else _unscaled(g, scale) for g in grads],
                                   trainable_variables=trainable_variables)
        grow = tf.equal(self.step_counter, self.dynamic_growth_steps - 1)
        self.step_counter.assign(tf.where(grow, tf.zeros_like(self.step_counter), self.step_counter + 1))
        self.dynamic_scale.assign(tf.where(grow, self.dynamic_scale * 2.0, self.dynamic_scale))


def make_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    """The optimizer named by `cfg.optimizer` (wrapped in dynamic loss scaling for mixed-float16). Clipping is
    done by the model, on the global norm; `SoftmaxModel.compile` makes it apply gradients as given (`no_reduce`)."""
    optimizer = _base_optimizer(cfg)
    return SparseLossScaleOptimizer(optimizer) if cfg.precision == "mixed-float16" else optimizer


def no_reduce(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """An optimizer that applies gradients as it gets them under tf.distribute.

    Keras' TensorFlow optimizers sum the replicas' gradients inside `apply` (`_all_reduce_sum_gradients`,
    called before the per-variable update in a merge call). lmcli's train_step reduces them itself first, to clip
    their global norm, so a second sum would multiply them by the replica count.
    """
    optimizer._all_reduce_sum_gradients = lambda grads_and_vars: list(grads_and_vars)
    return optimizer


def _base_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=cfg.lr)
    if cfg.optimizer == "lazy-adam":
        return LazyAdam(learning_rate=cfg.lr)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=cfg.lr)
    if cfg.optimizer == "adagrad":
        return keras.optimizers.Adagrad(learning_rate=cfg.lr)
    raise ConfigError(f"unknown optimizer '{cfg.optimizer}'")
