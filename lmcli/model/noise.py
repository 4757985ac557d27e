"""Stateless training randomness (dropout masks, embedding noise), keyed on (seed, step, site).

Nothing here has state: the same (seed, step) gives the same masks, so a resumed run draws exactly what the
uninterrupted run drew. Row-shaped noise is drawn for the whole global batch and the rows this replica owns are
sliced out, so that a batch split over N replicas gets exactly the masks of one device: results do not depend
on the replica count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf

# Sites: one independent stream each.
EMBEDDING_DROPOUT, WORD_DROPOUT, VARIATIONAL = 0, 1, 2
LAYER_DROPOUT = 8  # + layer index: dropout after LSTM layer i


@dataclass(frozen=True)
class Noise:
    """The randomness of one training step.

    Attributes:
        seed: the run's seed.
        step: the global step, int64 scalar tensor.
        row_offset: first global batch row this replica holds (0 on one device).
        global_rows: rows of the global batch (0 = this replica's rows: one device).
    """

    seed: int
    step: Any
    row_offset: Any = 0
    global_rows: Any = 0

    def key(self, site: int) -> tf.Tensor:
        """(2,) int64 seed of one site's stream at this step."""
        base = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.step, tf.int64)])
        return tf.random.experimental.stateless_fold_in(base, site)

    def uniform(self, site: int, shape) -> tf.Tensor:
        """U[0, 1) of `shape`, the same on every replica (e.g. one value per word type)."""
        return tf.random.stateless_uniform(shape, seed=self.key(site))

    def rows(self, site: int, shape, normal: bool = False) -> tf.Tensor:
        """U[0, 1) (or N(0, 1)) of `shape` = (rows, ...) for this replica's rows of the global batch."""
        shape = tf.convert_to_tensor(shape)
        local = shape[0]
        total = tf.maximum(tf.cast(self.global_rows, local.dtype), local)
        draw = tf.random.stateless_normal if normal else tf.random.stateless_uniform
        full = draw(tf.concat([[total], shape[1:]], 0), seed=self.key(site))  # (G, ...)
        return full[self.row_offset:self.row_offset + local]  # (rows, ...)

    def dropout(self, x: tf.Tensor, rate: float, site: int) -> tf.Tensor:
        """Inverted dropout of x (B, ...) with keep probability 1 - rate."""
        if rate <= 0:
            return x
        keep = self.rows(site, tf.shape(x)) >= rate
        return tf.where(keep, x / (1.0 - rate), tf.zeros_like(x))
