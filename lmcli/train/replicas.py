"""What a replica of a tf.distribute step reads and shares.

- `local`: the replica's own copy of a mirrored variable. A `tf.gather` on a MirroredVariable has no sparse read
  (`DistributedVariable.sparse_read` is not implemented), so it reads the whole [V, D] variable densely and then
  gathers, and after a row-sparse update every such read copies all V x D values (copy-on-read). A gather on the
  replica's component is one ResourceGather of the rows it needs; its gradient still reaches the mirrored variable
  as IndexedSlices (the tape watches the component the replica reads).
- `total`, `logsumexp`: values shared through tf.distribute's own all-reduce, for the few places where a
  replica's rows alone would give another result than the global batch: the TAPAS scores (a logsumexp over every
  row of the batch) and the learned-unigram counts. On one device each is the identity."""

from __future__ import annotations

import tensorflow as tf


def count() -> int:
    """Replicas in sync (1 outside a strategy)."""
    ctx = tf.distribute.get_replica_context()
    return ctx.num_replicas_in_sync if ctx is not None else 1


def local(variable, like=None):
    """The copy of `variable` that this replica reads and updates; `variable` itself when it is not mirrored.

    In a replica context (inside `strategy.run`): the component of the replica in sync. In an update context
    (the optimizer's per-device update, where `like` is the component being updated): the component on `like`'s
    device. In a cross-replica context (scoring, checkpoints): the variable itself.
    """
    if not isinstance(variable, tf.distribute.DistributedValues):
        return variable
    copies = tf.distribute.get_strategy().experimental_local_results(variable)
    if like is not None:
        return next(c for c in copies if c.device == like.device)
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return variable
    replica = tf.get_static_value(ctx.replica_id_in_sync_group)
    if replica is None:  # a strategy whose replica id is only known at run time: the (dense) mirrored read
        return variable
    # Replica ids run worker by worker, each worker holding the same number of local copies.
    return copies[int(replica) % len(copies)]


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
