"""LanguageModel: Embedding(V, E) -> LSTM x layers -> optional projection -> output W [V, D], b [V].

`train_step` hands the run's `Objective` one bundle (W, b, E, hidden states, labels, mask, the clock, layer
extras), so `compile()` takes no loss. `test_step` and `score` always use the full softmax on the same W and b.
Training randomness (dropout, embedding noise) is stateless, keyed on (seed, step), so a resumed run draws the
same masks; none of it runs outside `train_step`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import keras
import tensorflow as tf

from lmcli.config import ModelConfig
from lmcli.losses.context import Clock, LossInputs
from lmcli.model.embedding import WordEmbedding
from lmcli.model.noise import EMBEDDING_DROPOUT, LAYER_DROPOUT, Noise
from lmcli.model.output import OutputLayer
from lmcli.model.scoring import sums, token_scores
from lmcli.optim import merge_duplicate_rows
from lmcli.replicas import local

State = list  # [(h (B, H), c (B, H)) per layer]
Objective = Callable[..., tuple]  # lmcli.objective.Objective: (LossInputs, count, replicas) -> (loss, sums, facts)


class LanguageModel(keras.Model):
    """The fixed lmcli network. Constructor arguments mirror `ModelConfig`."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden: int, layers: int = 1,
                 proj_dim: int = 0, dropout: float = 0.0, tie_embeddings: bool = False,
                 embedding_dropout: float = 0.0, variational_embedding: bool = False, precision: str = "float32",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        # mixed-*: the LSTMs and the projection compute in half precision on float32 variables; the embedding, the
        # output layer, the losses and everything evaluation, generation and exports use stay float32.
        self.precision = precision
        half = None if precision == "float32" else keras.DTypePolicy(precision.replace("-", "_"))
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden = hidden
        self.num_layers = layers
        self.proj_dim = proj_dim
        self.dropout = dropout
        self.tie_embeddings = tie_embeddings
        self.embedding_dropout = embedding_dropout
        self.variational_embedding = variational_embedding
        self.supports_masking = True
        self.output_dim = proj_dim or hidden
        self.embedding = WordEmbedding(vocab_size, embedding_dim, embedding_dropout, variational_embedding,
                                       name="embedding")
        for i in range(layers):  # one attribute per layer: a plain list is invisible to tf.train.Checkpoint
            setattr(self, f"lstm_{i}", keras.layers.LSTM(hidden, return_sequences=True, return_state=True,
                                                         name=f"lstm_{i}", dtype=half))
        self.projection = (keras.layers.Dense(proj_dim, use_bias=False, name="projection", dtype=half)
                           if proj_dim else None)
        self.output_layer = OutputLayer(vocab_size, self.output_dim, tied=tie_embeddings, name="output")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.objective: Optional[Objective] = None
        self.clip_norm = 0.0
        self.seed = 0
        self.total_steps = 0
        self.train_tokens = 0

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, precision: str = "float32") -> "LanguageModel":
        return cls(cfg.vocab_size, cfg.embedding_dim, cfg.hidden, cfg.layers, cfg.proj_dim, cfg.dropout,
                   cfg.tie_embeddings, cfg.embedding_dropout, cfg.variational_embedding, precision)

    def get_config(self) -> dict:
        return {"vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim, "hidden": self.hidden,
                "layers": self.num_layers, "proj_dim": self.proj_dim, "dropout": self.dropout,
                "tie_embeddings": self.tie_embeddings, "embedding_dropout": self.embedding_dropout,
                "variational_embedding": self.variational_embedding, "precision": self.precision, "name": self.name}

    # ---- building blocks -------------------------------------------------------------------------
    @property
    def lstms(self) -> list:
        return [getattr(self, f"lstm_{i}") for i in range(self.num_layers)]

    def build(self, input_shape=None) -> None:
        ids = tf.zeros([1, 1], tf.int32)
        self.embedding.build()
        self.call(ids)
        self.output_layer.build()
        self.built = True

    def output_weights(self) -> tuple[tf.Variable, tf.Variable]:
        """(W (V, D), b (V,)): the very variables the loss trains and the full softmax reads.

        These are the tf.Variables behind the Keras weights: `tf.gather` on them reads only the gathered
        rows, while a gather on the Keras wrapper first reads the whole matrix, which after a row-sparse
        update (copy-on-read) copies all V x D values every time. Under tf.distribute they are this replica's
        copies (`lmcli.replicas.local`): a gather on the mirrored variable would read all of it.
        """
        w = self.embedding.matrix() if self.tie_embeddings else local(self.output_layer.kernel.value)
        return w, local(self.output_layer.bias.value)

    @property
    def extras_provided(self) -> frozenset:
        """Names of the extra tensors `forward` exposes to loss terms."""
        return frozenset({"raw_hidden", *(["log_alpha"] if self.variational_embedding else [])})

    def zero_state(self, batch_size: int) -> State:
        zeros = tf.zeros([batch_size, self.hidden])
        return [(zeros, zeros) for _ in self.lstms]

    def forward(self, inputs: tf.Tensor, initial_state: Optional[State] = None, mask: Optional[tf.Tensor] = None,
                noise: Optional[Noise] = None) -> tuple[tf.Tensor, State, dict]:
        """Hidden states, final state and the extras loss terms may read.

        Args:
            inputs: ids, (B, T) int.
            initial_state: carried LSTM state, or None for zeros.
            mask: (B, T) bool; the LSTM keeps its state unchanged over masked steps (left padding).
            noise: the step's training randomness; None = no dropout and no embedding noise (inference).

        Returns:
            (hidden (B, T, D), [(h, c) per layer], {"raw_hidden": last LSTM output before dropout (B, T, H),
            "log_alpha": (V,) with a variational embedding}).
        """
        drop = (lambda x, site: x) if noise is None else (lambda x, site: noise.dropout(x, self.dropout, site))
        x = drop(self.embedding(inputs, noise=noise), EMBEDDING_DROPOUT)  # (B, T, E)
        states = []
        for i, lstm in enumerate(self.lstms):
            init = list(initial_state[i]) if initial_state is not None else None
            raw, h, c = lstm(x, initial_state=init, mask=mask)  # (B, T, H)
            x = drop(raw, LAYER_DROPOUT + i)
            states.append((h, c))
        if self.projection is not None:
            x = self.projection(x)  # (B, T, D)
        f32 = lambda t: tf.cast(t, tf.float32)  # noqa: E731 (a no-op in float32)
        states = [(f32(h), f32(c)) for h, c in states]
        return f32(x), states, {"raw_hidden": f32(raw), **self.embedding.extras()}

    def call(self, inputs: tf.Tensor, initial_state: Optional[State] = None, mask: Optional[tf.Tensor] = None,
             training: bool = False, noise: Optional[Noise] = None):
        """(hidden (B, T, D), final state) for ids (B, T); `noise` applies only when training."""
        hidden, states, _ = self.forward(inputs, initial_state, mask, noise if training else None)
        return hidden, states

    def full_logits(self, hidden: tf.Tensor) -> tf.Tensor:
        """(..., D) -> (..., V) with the trained W and b."""
        w, _ = self.output_weights()
        return self.output_layer(hidden, w)

    def step(self, ids: tf.Tensor, state: State) -> tuple[tf.Tensor, State]:
        """One token per row with the state carried: ids (B,) -> (log_probs (B, V), state)."""
        x = self.embedding(ids)  # (B, E): the mean vectors, no noise
        new_state = []
        for i, lstm in enumerate(self.lstms):
            x, (h, c) = lstm.cell(x, list(state[i]))  # (B, H)
            new_state.append((h, c))
        if self.projection is not None:
            x = self.projection(x)  # (B, D)
        return tf.nn.log_softmax(self.full_logits(x)), new_state  # (B, V)

    # ---- full-softmax scoring (evaluation, whatever loss trained the model) ----------------------
    def score(self, inputs: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor,
              state: Optional[State] = None) -> dict:
        """Full-softmax statistics of a batch.

        Returns a dict with per-token `nll` (B, T) (0 at padding), the sums `nll_sum`, `tokens`,
        `top1`, `top5` (float64 scalars) and the final `state`.
        """
        hidden, new_state = self(inputs, initial_state=state, mask=lstm_mask(mask, state))
        scores = token_scores(self.full_logits(hidden), labels, mask)  # (B, T) each
        return {"nll": scores["nll"], **sums(scores, tf.cast(mask, tf.float32)), "state": new_state}

    # ---- Keras steps ------------------------------------------------------------------------------
    def compile(self, optimizer, objective: Objective, clip_norm: float = 0.0, seed: int = 0,
                total_steps: int = 0, train_tokens: int = 0, **kwargs) -> None:
        """Like keras.Model.compile, but with the run's `Objective` instead of a loss.

        `total_steps` (the planned steps) and `train_tokens` (real tokens per epoch) reach the objective's clock
        and terms.
        """
        super().compile(optimizer=optimizer, **kwargs)
        self.objective = objective
        self.clip_norm = clip_norm
        self.seed = seed
        self.total_steps = total_steps
        self.train_tokens = train_tokens

    @property
    def metrics(self):
        return [self.loss_tracker]

    def compute_objective(self, data: dict, count=None, replicas: int = 1):
        """(loss, sums, facts, state) of a batch {inputs, labels, mask[, state, step, epoch, row_offset,
        global_rows]}, with training randomness on."""
        mask = tf.cast(data["mask"], tf.float32)  # (B, T)
        step = tf.cast(data.get("step", self.optimizer.iterations), tf.int64)
        noise = Noise(self.seed, step, data.get("row_offset", 0), data.get("global_rows", 0))
        seq_mask = data["seq_mask"] if "seq_mask" in data else lstm_mask(mask, data.get("state"))
        hidden, state, extras = self.forward(data["inputs"], data.get("state"), seq_mask, noise)
        w, b = self.output_weights()
        inputs = LossInputs(w, b, tf.reshape(hidden, [-1, self.output_dim]),  # (N, D)
                            tf.reshape(data["labels"], [-1]), tf.reshape(mask, [-1]),  # (N,), (N,)
                            Clock(step, data.get("epoch", 0.0), self.total_steps), self.embedding.matrix(),
                            extras, self.train_tokens, tf.shape(mask)[0], data.get("row_offset", 0),
                            data.get("global_rows", 0))
        loss, sums, facts = self.objective(inputs, count, replicas)
        return loss, sums, facts, state

    def train_step(self, data: dict) -> dict:
        """One optimiser step on {inputs, labels, mask[, state, step, epoch]} (all (B, T) but state and clock).

        Under tf.distribute this runs on each replica with its rows of the global batch, `global_tokens` (the
        global batch's real tokens, the loss's divisor) and `row_offset`/`global_rows` (for the noise); the
        gradients are summed over replicas here, before clipping, and the optimizer applies them as they are.

        Returns the step's loss and each part of it (`sums`), the terms' weights and reports (`facts`), the real
        token count, the gradient norm and, when a state was given, the final state.
        """
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss, sums, facts, state = self.compute_objective(data, data.get("global_tokens"), replicas)
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
        logs = {**sums, **facts, "tokens": tokens, "grad_norm": grad_norm}
        if "state" in data:
            logs["state"] = state
        return logs

    def test_step(self, data: dict) -> dict:
        """Full-softmax loss on {inputs, labels, mask}, whatever loss trained the model."""
        stats = self.score(data["inputs"], data["labels"], data["mask"], data.get("state"))
        loss = tf.cast(tf.math.divide_no_nan(stats["nll_sum"], stats["tokens"]), tf.float32)
        self.loss_tracker.update_state(loss, sample_weight=tf.cast(stats["tokens"], tf.float32))
        return {"loss": self.loss_tracker.result()}


def all_reduce(grads: list, replicas: int) -> list:
    """The sum of every replica's gradients (tf.distribute's all-reduce; IndexedSlices stay sparse)."""
    if replicas == 1:
        return grads
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)


def lstm_mask(mask: tf.Tensor, state: Optional[State]) -> Optional[tf.Tensor]:
    """The mask the LSTMs see: none for a window of a packed stream (a carried state is given), the batch's mask
    otherwise.

    In a packed stream padding only ever follows a row's last token, at the end of the epoch, where the carried
    state is dropped; running the LSTM over it changes no loss and no metric (they read the loss mask), and keeps
    every mask right-padded with no fully masked row, as the cuDNN kernel requires.
    """
    return None if state is not None else tf.cast(mask, tf.bool)


def build_model(cfg: ModelConfig, precision: str = "float32") -> LanguageModel:
    """A built (variables created) LanguageModel for `cfg`, computing in `precision` (training only)."""
    model = LanguageModel.from_model_config(cfg, precision)
    model.build()
    return model
