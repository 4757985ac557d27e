"""Full-softmax scoring maths shared by the Keras model and the pure-TF inference graph (one copy).

Per token: the negative log-likelihood of the label, and whether the label ranks first / in the top five (a class
tied with the label counts against it). Padding (mask 0) gets 0 everywhere.
"""

from __future__ import annotations

import tensorflow as tf


def token_scores(logits: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
    """{nll, top1, top5}, each (B, T) float32, 0 at padding, from logits (B, T, V), labels (B, T), mask (B, T)."""
    maskf = tf.cast(mask, tf.float32)  # (B, T)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)  # (B, T)
    target = tf.gather(logits, labels, batch_dims=2)  # (B, T)
    at_least = tf.reduce_sum(tf.cast(logits >= target[..., None], tf.int32), axis=-1)  # (B, T) the label included
    rank = at_least - 1  # (B, T) other classes at or above the label: a tie counts against it
    return {"nll": tf.where(maskf > 0, nll, 0.0), "top1": tf.cast(rank < 1, tf.float32) * maskf,
            "top5": tf.cast(rank < 5, tf.float32) * maskf}


def sums(scores: dict[str, tf.Tensor], mask: tf.Tensor) -> dict[str, tf.Tensor]:
    """float64 sums over the batch: nll_sum, tokens, top1, top5."""
    f64 = lambda t: tf.reduce_sum(tf.cast(t, tf.float64))  # noqa: E731
    return {"nll_sum": f64(scores["nll"]), "tokens": f64(mask), "top1": f64(scores["top1"]),
            "top5": f64(scores["top5"])}
