"""A LanguageModel behind compiled functions: the backend eval, generate and training's validation share."""

from __future__ import annotations

import tensorflow as tf


class KerasBackend:
    """A LanguageModel (in training, or restored from a checkpoint) behind tf.functions: zero_state, score,
    prefill, step, the interface `lmcli.serve.inference` also gives an export."""

    def __init__(self, model) -> None:
        self.model = model
        self._score = tf.function(model.score, reduce_retracing=True)
        self._step = tf.function(model.step, reduce_retracing=True)
        self._prefill = tf.function(self._prefill_fn, reduce_retracing=True)

    def _prefill_fn(self, ids, mask):
        hidden, state = self.model(ids, mask=mask)  # (B, T, D); masked (left-padding) steps keep state
        return tf.nn.log_softmax(self.model.full_logits(hidden[:, -1])), state  # (B, V)

    def zero_state(self, batch_size: int) -> list:
        return self.model.zero_state(batch_size)

    def score(self, inputs, labels, mask, state=None) -> dict:
        return self._score(inputs, labels, mask, state)

    def prefill(self, ids, mask):
        return self._prefill(ids, tf.constant(mask, tf.bool))

    def step(self, ids, state):
        return self._step(tf.constant(ids, tf.int32), state)
