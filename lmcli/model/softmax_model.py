"""SoftmaxModel: any network that ends in lmcli's output layer (W [V, D], b [V]), trained by an Objective.

The one training and evaluation path, shared by the CLI's fixed LSTM (`lmcli.model.network.LanguageModel`) and
a user's own backbone (`lmcli.model.backbone.BackboneModel`, public as `lmcli.keras`):

- `train_step` hands the run's `Objective` one bundle (W, b, E, hidden states, labels, mask, the clock, layer
  extras), so `compile()` takes an objective instead of a loss; gradients are summed over replicas here, before
  clipping, and the optimizer applies them as they are;
- `test_step` and `score` always use the full softmax on the same W and b, whatever trained them.

A subclass provides `forward(inputs, state, seq_mask, noise) -> (hidden (B, T, D), state, extras)`, `output_dim`,
`output_layer` and, when it has one, `embedding_matrix()`.
"""

from __future__ import annotations

from typing import Any, Optional

import keras
import tensorflow as tf

from lmcli.losses.context import Clock, LossInputs
from lmcli.model.noise import Noise
from lmcli.model.scoring import sums, token_scores
from lmcli.train.optim import merge_duplicate_rows, no_reduce
from lmcli.train.replicas import local


class _EpochHolder:
    """The fractional epoch `fit` reaches the clock with (`lmcli.keras.EpochClock` sets it). A plain object, so
    that the variable is not tracked: it is no part of a checkpoint or an export."""

    def __init__(self) -> None:
        self.variable: Optional[tf.Variable] = None


class SoftmaxModel(keras.Model):
    """A keras.Model whose last layer is `OutputLayer` and whose loss is an `lmcli.train.objective.Objective`."""

    output_dim: int
    output_layer: Any

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.objective = None
        self.clip_norm = 0.0
        self.seed = 0
        self.total_steps = 0
        self.train_tokens = 0
        self._epoch = _EpochHolder()

    # ---- what a subclass provides -----------------------------------------------------------------
    def forward(self, inputs: tf.Tensor, initial_state=None, mask: Optional[tf.Tensor] = None,
                noise: Optional[Noise] = None) -> tuple[tf.Tensor, Any, dict]:
        """(hidden (B, T, D), final state or None, extras); `noise` is None outside training."""
        raise NotImplementedError

    def embedding_matrix(self) -> Optional[tf.Tensor]:
        """The input embedding matrix E (V, E) loss terms may read, or None."""
        return None

    def sequence_mask(self, mask: tf.Tensor, state) -> Optional[tf.Tensor]:
        """The mask the network sees, from the loss mask (B, T)."""
        return tf.cast(mask, tf.bool)

    @property
    def extras_provided(self) -> frozenset:
        """Names of the extra tensors `forward` exposes to loss terms."""
        return frozenset({"raw_hidden"})

    # ---- the output layer -------------------------------------------------------------------------
    def output_weights(self) -> tuple[tf.Variable, tf.Variable]:
        """(W (V, D), b (V,)): the very variables the loss trains and the full softmax reads.

        These are the tf.Variables behind the Keras weights: `tf.gather` on them reads only the gathered rows,
        while a gather on the Keras wrapper first reads the whole matrix, which after a row-sparse update
        (copy-on-read) copies all V x D values every time. Under tf.distribute they are this replica's copies
        (`lmcli.train.replicas.local`): a gather on the mirrored variable would read all of it.
        """
        return local(self.output_layer.kernel.value), local(self.output_layer.bias.value)

    def full_logits(self, hidden: tf.Tensor) -> tf.Tensor:
        """(..., D) -> (..., V) with the trained W and b."""
        w, _ = self.output_weights()
        return self.output_layer(hidden, w)

    # ---- full-softmax scoring (evaluation, whatever loss trained the model) ----------------------
    def score(self, inputs: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor, state=None) -> dict:
        """Full-softmax statistics of a batch: per-token `nll` (B, T) (0 at padding), the float64 sums `nll_sum`,
        `tokens`, `top1`, `top5`, and the final `state` (None for a network without one)."""
        hidden, new_state, _ = self.forward(inputs, state, self.sequence_mask(mask, state))
        scores = token_scores(self.full_logits(hidden), labels, mask)  # (B, T) each
        return {"nll": scores["nll"], **sums(scores, tf.cast(mask, tf.float32)), "state": new_state}

    # ---- Keras steps ------------------------------------------------------------------------------
    def compile(self, optimizer, objective, clip_norm: float = 0.0, seed: int = 0, total_steps: int = 0,
                train_tokens: int = 0, **kwargs) -> None:
        """Like keras.Model.compile, but with an `Objective` instead of a loss.

        Args:
            optimizer: any Keras optimizer (`lmcli.train.optim.LazyAdam` keeps sparse rows sparse); it is made to apply
                gradients as given, since `train_step` sums them over replicas itself.
            objective: the strategy and terms (`lmcli.train.objective.Objective`).
            clip_norm: clip the global gradient norm to this; 0 = off.
            seed: keys the training randomness and the samplers.
            total_steps: planned steps of the whole run (schedules of terms and TAPAS's temperature); 0 = unknown.
            train_tokens: real tokens of one epoch (the kl term's normaliser); 0 = unknown.
        """
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        no_reduce(inner)
        super().compile(optimizer=optimizer, **kwargs)
        self.objective = objective
        self.clip_norm, self.seed = clip_norm, seed
        self.total_steps, self.train_tokens = total_steps, train_tokens
        if self._epoch.variable is None:
            self._epoch.variable = tf.Variable(0.0, trainable=False, name="epoch_clock")

    def set_epoch(self, epoch: float) -> None:
        """The fractional epoch the next steps run in, under `fit` (`lmcli.keras.EpochClock` calls it)."""
        self._epoch.variable.assign(float(epoch))

    @property
    def metrics(self):
        return [self.loss_tracker]

    def compute_objective(self, data, count=None, replicas: int = 1):
        """(loss, sums, facts, state) of a batch {inputs, labels, mask[, state, seq_mask, step, epoch, row_offset,
        global_rows]} (or an (inputs, labels[, mask]) tuple), with training randomness on."""
        data = as_batch(data)
        mask = tf.cast(data["mask"], tf.float32)  # (B, T)
        step = tf.cast(data.get("step", self.optimizer.iterations), tf.int64)
        noise = Noise(self.seed, step, data.get("row_offset", 0), data.get("global_rows", 0))
        seq_mask = data["seq_mask"] if "seq_mask" in data else self.sequence_mask(mask, data.get("state"))
        hidden, state, extras = self.forward(data["inputs"], data.get("state"), seq_mask, noise)
        w, b = self.output_weights()
        epoch = data["epoch"] if "epoch" in data else self._epoch_now()
        inputs = LossInputs(w, b, tf.reshape(hidden, [-1, self.output_dim]),  # (N, D)
                            tf.reshape(data["labels"], [-1]), tf.reshape(mask, [-1]),  # (N,), (N,)
                            Clock(step, epoch, self.total_steps), self.embedding_matrix(), extras,
                            self.train_tokens, tf.shape(mask)[0], data.get("row_offset", 0),
                            data.get("global_rows", 0))
        loss, loss_sums, facts = self.objective(inputs, count, replicas)
        return loss, loss_sums, facts, state

    def _epoch_now(self):
        return self._epoch.variable.read_value() if self._epoch.variable is not None else 0.0

    def train_step(self, data) -> dict:
        """One optimiser step on {inputs, labels, mask[, state, step, epoch]} (all (B, T) but state and clock), or
        an (inputs, labels[, mask]) tuple as `fit` gives it.

        Under tf.distribute this runs on each replica with its rows of the global batch. The loss's divisor is the
        global batch's real tokens (`global_tokens`, summed here when the caller did not give it), so the replicas'
        losses add up to one device's loss; the gradients are summed over replicas before clipping.

        Returns the step's loss and each part of it (`sums`), the terms' weights and reports (`facts`), the real
        token count, the gradient norm and, when a state was given, the final state.
        """
        data = with_replica_facts(as_batch(data))
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss, loss_sums, facts, state = self.compute_objective(data, data.get("global_tokens"), replicas)
            scaled = self.optimizer.scale_loss(loss)  # float16: times the dynamic loss scale; else the loss
        pairs = [(g, v) for g, v in zip(tape.gradient(scaled, self.trainable_variables), self.trainable_variables)
                 if g is not None]
        grads, variables = all_reduce([g for g, _ in pairs], replicas), [v for _, v in pairs]
        grads = [merge_duplicate_rows(g) for g in grads]  # after the reduction: rows repeated across replicas too
        scale = tf.cast(getattr(self.optimizer, "dynamic_scale", 1.0), tf.float32)  # what scale_loss multiplied by
        grad_norm = tf.linalg.global_norm(grads)  # of the scaled gradients: clipped at clip_norm * scale
        if self.clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm * scale, use_norm=grad_norm)
        grad_norm = grad_norm / scale
        self.optimizer.apply(grads, variables)  # a loss-scale optimizer unscales them (and skips non-finite ones)
        tokens = tf.reduce_sum(tf.cast(data["mask"], tf.float32))
        self.loss_tracker.update_state(loss, sample_weight=tokens)
        logs = {**loss_sums, **facts, "tokens": tokens, "grad_norm": grad_norm}
        if "state" in data:
            logs["state"] = state
        return logs

    def test_step(self, data) -> dict:
        """Full-softmax loss (mean nats per real token) on a batch, whatever loss trained the model."""
        data = as_batch(data)
        stats = self.score(data["inputs"], data["labels"], data["mask"], data.get("state"))
        loss = tf.cast(tf.math.divide_no_nan(stats["nll_sum"], stats["tokens"]), tf.float32)
        self.loss_tracker.update_state(loss, sample_weight=tf.cast(stats["tokens"], tf.float32))
        return {"loss": self.loss_tracker.result()}


def as_batch(data) -> dict:
    """A batch as a dict {inputs, labels, mask, ...}: dicts pass as they are; `fit`'s (x, y) or (x, y, weight)
    tuples become inputs, labels and mask (all ones when no weight is given)."""
    if isinstance(data, dict):
        return data
    inputs, labels = data[0], data[1]
    mask = data[2] if len(data) > 2 and data[2] is not None else tf.ones_like(labels, tf.float32)
    return {"inputs": inputs, "labels": labels, "mask": mask}


def with_replica_facts(data: dict) -> dict:
    """Under tf.distribute, what a caller like `fit` does not give: the global batch's real tokens (the loss's
    divisor) and where this replica's rows sit in the global batch (keys of per-row randomness)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1 or "global_tokens" in data:
        return data
    rows = tf.shape(data["labels"])[0]
    tokens = tf.reduce_sum(tf.cast(data["mask"], tf.float32))
    return {**data, "global_tokens": ctx.all_reduce(tf.distribute.ReduceOp.SUM, tokens),
            "row_offset": tf.cast(ctx.replica_id_in_sync_group, tf.int32) * rows,
            "global_rows": rows * ctx.num_replicas_in_sync}


def all_reduce(grads: list, replicas: int) -> list:
    """The sum of every replica's gradients (tf.distribute's all-reduce; IndexedSlices stay sparse)."""
    if replicas == 1:
        return grads
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
