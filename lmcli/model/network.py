"""LanguageModel: Embedding(V, E) -> LSTM x layers -> optional projection -> output W [V, D], b [V].

The CLI's network on the public training path (`SoftmaxModel`: `train_step` hands the run's `Objective` one
bundle, `test_step` and `score` use the full softmax on the same W and b); this module adds only the network, its
carried state and its step-by-step inference. Training randomness (dropout, embedding noise) is stateless, keyed
on (seed, step), so a resumed run draws the same masks; none of it runs outside `train_step`.
"""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from lmcli.config import ModelConfig
from lmcli.model.embedding import WordEmbedding
from lmcli.model.lstm import LSTM
from lmcli.model.noise import EMBEDDING_DROPOUT, LAYER_DROPOUT, Noise
from lmcli.model.output import OutputLayer
from lmcli.model.softmax_model import SoftmaxModel
from lmcli.train.replicas import local

State = list  # [(h (B, H), c (B, H)) per layer]


class LanguageModel(SoftmaxModel):
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
            setattr(self, f"lstm_{i}", LSTM(hidden, return_sequences=True, return_state=True, name=f"lstm_{i}",
                                            dtype=half))
        self.projection = (keras.layers.Dense(proj_dim, use_bias=False, name="projection", dtype=half)
                           if proj_dim else None)
        self.output_layer = OutputLayer(vocab_size, self.output_dim, tied=tie_embeddings, name="output")

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
        """(W (V, D), b (V,)); W is the embedding matrix when tied (see `SoftmaxModel.output_weights`)."""
        if not self.tie_embeddings:
            return super().output_weights()
        return self.embedding.matrix(), local(self.output_layer.bias.value)

    def embedding_matrix(self) -> tf.Tensor:
        return self.embedding.matrix()

    def sequence_mask(self, mask: tf.Tensor, state: Optional[State]) -> Optional[tf.Tensor]:
        return lstm_mask(mask, state)

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
