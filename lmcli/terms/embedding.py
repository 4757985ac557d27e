"""`--aux-loss embedding`: compare a sharpened softmax's expected embedding with the target word's embedding.

argmax -> one-hot -> E is not differentiable, so p is sharpened instead: R rounds of p <- p^K / sum p^K, done
in log space (log p <- log_softmax(K log p)), so K = 200 stays finite. The predicted vector is p @ E over the
strategy's classes (all V for full; the label and the candidates for sampled/TAPAS, so O(S * E) per token and
row-sparse gradients), never a tiled copy of E. The target E[label] is a constant (stop-gradient): otherwise
the cheapest way to shrink the distance would be to shrink E itself towards zero.
"""

from __future__ import annotations

import tensorflow as tf

from lmcli.config import TermsConfig
from lmcli.losses.context import Clock, LossInputs, StrategyOutput


def sharpened_log_probs(logits: tf.Tensor, power: float, rounds: int) -> tf.Tensor:
    """log of p <- p^K / sum p^K applied `rounds` times to softmax(logits), (M, C)."""
    log_p = tf.nn.log_softmax(logits)  # (M, C)
    for _ in range(rounds):
        log_p = tf.nn.log_softmax(power * log_p)  # (M, C)
    return log_p


def expected_embedding(p: tf.Tensor, out: StrategyOutput, embeddings: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """p @ E over the strategy's classes, (M, E), with E's rows gathered (never tiled)."""
    shared = embeddings if out.classes is None else tf.gather(embeddings, out.classes)  # (C', E) or (R, C', E)
    own = p[:, :1] * tf.gather(embeddings, labels) if out.label_first else 0.0  # (M, E)
    rest = p[:, 1:] if out.label_first else p  # (M, C')
    if len(shared.shape) == 2:
        return own + tf.matmul(rest, shared)  # (M, E)
    per_row = tf.reshape(rest, tf.stack([tf.shape(shared)[0], -1, tf.shape(rest)[-1]]))  # (R, G, C')
    return own + tf.reshape(tf.matmul(per_row, shared), [-1, tf.shape(shared)[-1]])  # (M, E): row r's own set


def distance(predicted: tf.Tensor, target: tf.Tensor, kind: str) -> tf.Tensor:
    """1 - cos(predicted, target) or the mean squared difference, per row, (M,)."""
    if kind == "cosine":
        cos = tf.reduce_sum(tf.math.l2_normalize(predicted, -1) * tf.math.l2_normalize(target, -1), -1)
        return 1.0 - cos  # (M,)
    return tf.reduce_mean(tf.square(predicted - target), axis=-1)  # (M,)


def term(inputs: LossInputs, out: StrategyOutput, cfg: TermsConfig) -> tf.Tensor:
    """Per-token distances (N,) between p @ E and E[label] (0 at tokens the strategy did not score)."""
    labels = out.row_labels(inputs.labels)  # (M,)
    p = tf.exp(sharpened_log_probs(out.logits, cfg.aux_power, cfg.aux_rounds))  # (M, C)
    predicted = expected_embedding(p, out, inputs.embeddings, labels)  # (M, E)
    target = tf.stop_gradient(tf.gather(inputs.embeddings, labels))  # (M, E)
    return out.to_tokens(distance(predicted, target, cfg.aux_distance), tf.shape(inputs.labels)[0])  # (N,)


def weight(clock: Clock, cfg: TermsConfig) -> tf.Tensor:
    return tf.constant(cfg.aux_weight, tf.float32)
