"""Values shared by the replicas of a tf.distribute step (through tf.distribute's own all-reduce), for the few
places where a replica's rows alone would give another result than the global batch: the TAPAS scores (a
logsumexp over every row of the batch) and the learned-unigram counts. On one device each is the identity."""

from __future__ import annotations

import tensorflow as tf


def count() -> int:
    """Replicas in sync (1 outside a strategy)."""
    ctx = tf.distribute.get_replica_context()
    return ctx.num_replicas_in_sync if ctx is not None else 1


def total(value):
    """The sum over replicas of `value` (a tensor or IndexedSlices; slices stay sparse)."""
    if count() == 1:
        return value
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, value)


def logsumexp(scores: tf.Tensor) -> tf.Tensor:
    """log sum_r exp(scores_r), elementwise over replicas: the logsumexp over the global batch's rows when each
    replica holds the logsumexp over its own rows (-inf for a replica without rows)."""
    if count() == 1:
        return scores
    every = tf.distribute.get_replica_context().all_gather(scores[None], axis=0)  # (R, S)
    return tf.reduce_logsumexp(every, axis=0)  # (S,)
