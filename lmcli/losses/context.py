"""What a loss strategy and a loss term are given, and what a strategy gives back.

One bundle (`LossInputs`) carries everything a loss may read: the output layer's W and b, the input
embedding matrix E, the hidden states, labels and mask (flattened to N = B * T tokens), the training clock
(step, fractional epoch, planned total) and any extra tensors a layer exposes (`extras`, e.g. the variational
embedding's log alpha). A strategy returns a `StrategyOutput`: per-token losses and its logits over the classes
it scored, which the terms may read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import tensorflow as tf


@dataclass(frozen=True)
class Clock:
    """Where training is.

    Attributes:
        step: global step, int64 scalar tensor (keys stateless sampling, drives schedules).
        epoch: epochs done, float32 scalar tensor, fractional (epoch index + batch / batches per epoch).
        total_steps: planned steps of the whole run; 0 if unknown.
    """

    step: tf.Tensor
    epoch: Any = 0.0
    total_steps: int = 0


@dataclass(frozen=True)
class LossInputs:
    """The one bundle of inputs of every strategy and term (N = B * T tokens).

    Attributes:
        weights: W, (V, D); bias: b, (V,); embeddings: the input embedding matrix E, (V, E) (None if unknown).
        hidden: (N, D) hidden states that meet W; labels: (N,) int; mask: (N,) float, 1 = real token.
        clock: step, epoch and planned total.
        extras: tensors layers expose: "raw_hidden" (B, T, H) the last LSTM layer's output before dropout,
            "log_alpha" (V,) with a variational embedding.
        train_tokens: real tokens of one training epoch (the kl term's normaliser); 0 if unknown.
        rows: batch rows the N tokens come in (N = rows * T, row-major); row_offset / global_rows: where these
            rows sit in the global batch under tf.distribute (per-row candidate sets are keyed on the global row).
    """

    weights: tf.Tensor
    bias: tf.Tensor
    hidden: tf.Tensor
    labels: tf.Tensor
    mask: tf.Tensor
    clock: Clock
    embeddings: Optional[tf.Tensor] = None
    extras: Mapping[str, tf.Tensor] = field(default_factory=dict)
    train_tokens: int = 0
    rows: Any = 1
    row_offset: Any = 0
    global_rows: Any = 0


@dataclass(frozen=True)
class StrategyOutput:
    """A strategy's per-token losses and the logits they came from.

    Attributes:
        losses: (N,) in nats, 0 where mask is 0.
        logits: (M, C) over the classes the strategy scored, for M of the N tokens.
        rows: (M,) int64 index of each logits row among the N tokens; None = all N, in order.
        classes: (C',) int ids of the columns shared by every row; None = all V classes; or (R, C') one set per
            batch row (the token rows of batch row r, row-major, share row r's set).
        label_first: column 0 is each row's own label and columns 1.. are `classes` (sampled, TAPAS);
            otherwise the columns are exactly `classes`.
    """

    losses: tf.Tensor
    logits: tf.Tensor
    rows: Optional[tf.Tensor] = None
    classes: Optional[tf.Tensor] = None
    label_first: bool = False

    def row_labels(self, labels: tf.Tensor) -> tf.Tensor:
        """The labels (M,) of the logits rows."""
        return labels if self.rows is None else tf.gather(labels, self.rows)

    def to_tokens(self, values: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
        """(M,) values of the logits rows -> (N,), zeros elsewhere."""
        return values if self.rows is None else scatter_rows(values, self.rows, n)


def scatter_rows(values: tf.Tensor, rows: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """(M,) values at token positions `rows` (M,) -> (N,), zeros elsewhere."""
    return tf.scatter_nd(tf.cast(rows, tf.int64)[:, None], values, tf.cast(tf.reshape(n, [1]), tf.int64))


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy's setup made for the run: its candidate sampler (or None) and the run's seed."""

    sampler: Optional[Any] = None
    seed: int = 0
