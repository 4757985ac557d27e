"""The input embedding: E (V, E) looked up by row, with training-only word dropout and variational noise.

The lookup is a `tf.gather` on the tf.Variable behind the Keras weight, which reads only the gathered rows.
(`keras.layers.Embedding` gathers from the Keras variable, and after a row-sparse update that read copies the
whole V x E matrix every step.) Both regularisers gather their per-word values by id, so the gradient of E stays
row-sparse (IndexedSlices).

- word dropout (`--embedding-dropout P`): each word type is dropped for the whole batch (everywhere it occurs)
  with probability P, the kept ones scaled by 1 / (1 - P). The keep mask is one value per type, keyed on
  (seed, step), so it is the same on every replica.
- variational (`--variational-embedding`): a learned log alpha per word (V,); in training the looked-up vector
  is theta * (1 + sqrt(alpha) * eps), one eps ~ N(0, 1) per token occurrence (a Gaussian gate on the whole
  vector). Evaluation, generation and exports use the mean theta.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import keras
import tensorflow as tf

from lmcli.model.noise import VARIATIONAL, WORD_DROPOUT, Noise
from lmcli.terms.variational import clipped
from lmcli.train.replicas import local

INITIAL_LOG_ALPHA = -6.0  # alpha ~ 0.0025: almost no noise at the start


class WordEmbedding(keras.layers.Layer):
    """E (V, E), and log alpha (V,) when variational.

    Args:
        vocab_size: V.
        dim: E.
        word_dropout: probability of dropping a word type for a whole batch in training.
        variational: learn a Gaussian dropout rate per word.
    """

    def __init__(self, vocab_size: int, dim: int, word_dropout: float = 0.0, variational: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.dim = dim
        self.word_dropout = word_dropout
        self.variational = variational
        self._scoped = _NoiseHolder()

    def build(self, input_shape=None) -> None:
        # `_embeddings`, as keras.layers.Embedding names it, so checkpoints of either layer restore into this one.
        self._embeddings = self.add_weight(name="embeddings", shape=(self.vocab_size, self.dim),
                                           initializer="uniform")
        self.log_alpha = (self.add_weight(name="log_alpha", shape=(self.vocab_size,),
                                          initializer=keras.initializers.Constant(INITIAL_LOG_ALPHA))
                          if self.variational else None)
        self.built = True

    @property
    def embeddings(self) -> keras.Variable:
        return self._embeddings

    def matrix(self) -> tf.Variable:
        """E, the tf.Variable itself (gathers read only their rows); under tf.distribute, this replica's copy."""
        return local(self._embeddings.value)

    def extras(self) -> dict:
        """What the loss terms may read: log alpha (V,) when variational."""
        return {"log_alpha": local(self.log_alpha.value)} if self.variational else {}

    @contextlib.contextmanager
    def noise_scope(self, noise: Noise) -> Iterator[None]:
        """Within it, calls that pass no `noise` use this one: how `BackboneModel` reaches the embedding inside a
        user's backbone, which calls it with ids only."""
        self._scoped.noise = noise
        try:
            yield
        finally:
            self._scoped.noise = None

    def call(self, ids: tf.Tensor, noise: Optional[Noise] = None) -> tf.Tensor:
        """ids (B, ...) -> vectors (B, ..., E); `noise` (training) turns on the regularisers."""
        noise = noise if noise is not None else self._scoped.noise
        x = tf.gather(self.matrix(), ids)  # (B, T, E)
        if noise is None:
            return x
        if self.word_dropout > 0:
            keep = noise.uniform(WORD_DROPOUT, [self.vocab_size]) >= self.word_dropout  # (V,)
            scale = tf.cast(tf.gather(keep, ids), x.dtype) / (1.0 - self.word_dropout)  # (B, T)
            x = x * scale[..., None]
        if self.variational:
            alpha = tf.exp(clipped(tf.gather(local(self.log_alpha.value), ids)))  # (B, T)
            eps = noise.rows(VARIATIONAL, tf.shape(alpha), normal=True)  # (B, T)
            x = x * (1.0 + tf.sqrt(alpha) * eps)[..., None]
        return x

    def compute_output_shape(self, input_shape) -> tuple:
        return (*input_shape, self.dim)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"vocab_size": self.vocab_size, "dim": self.dim, "word_dropout": self.word_dropout,
                       "variational": self.variational})
        return config


class _NoiseHolder:
    """A plain object (not tracked by Keras or checkpoints) holding the scoped noise."""

    noise: Optional[Noise] = None
