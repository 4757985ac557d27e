"""BackboneModel: a user's own Keras network in front of lmcli's output layer.

The backbone is any Keras layer or model mapping ids (B, T) to hidden states (B, T, D). Training goes through the
same `SoftmaxModel.train_step` as the CLI's LSTM: the objective (any registered strategy plus terms) sees W, b,
the hidden states, the labels, the mask and the clock; evaluation is the full softmax on the same W and b.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

import tensorflow as tf

from lmcli.model.embedding import WordEmbedding
from lmcli.model.noise import Noise
from lmcli.model.output import OutputLayer
from lmcli.model.softmax_model import SoftmaxModel
from lmcli.train.replicas import local


class BackboneModel(SoftmaxModel):
    """backbone(ids) -> hidden (B, T, D) -> OutputLayer(V, D), trained with an lmcli objective.

    Args:
        backbone: a Keras layer or model, ids (B, T) int -> hidden states (B, T, D); called with `training=True`
            in `train_step` (its own dropout applies there) and `training=False` everywhere else.
        vocab_size: V.
        dim: D, the width of the backbone's output.
        embedding: the backbone's input embedding layer, when loss terms should see its matrix (`--aux-loss
            embedding`'s equivalent); any layer with an `embeddings` weight (V, E). With `lmcli.keras.Embedding`
            its word dropout and variational noise apply in training (keyed on seed and step, as in the CLI), and
            a variational one brings the kl term.
        mask_input: pass the (B, T) bool mask of real tokens to the backbone as `mask=` (for a backbone that
            accepts one, e.g. a Keras RNN); by default the backbone sees the ids only.
    """

    def __init__(self, backbone: Any, vocab_size: int, dim: int, embedding: Optional[Any] = None,
                 mask_input: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.vocab_size = vocab_size
        self.output_dim = dim
        self.embedding = embedding
        self.mask_input = mask_input
        self.output_layer = OutputLayer(vocab_size, dim, name="output")

    def build(self, input_shape=None) -> None:
        self.forward(tf.zeros([1, 1], tf.int32))
        self.output_layer.build()
        self.built = True

    def forward(self, inputs: tf.Tensor, initial_state=None, mask: Optional[tf.Tensor] = None,
                noise: Optional[Noise] = None) -> tuple[tf.Tensor, None, dict]:
        """(hidden (B, T, D) float32, None, {"raw_hidden": hidden}); training mode when `noise` is given."""
        kwargs = {"mask": mask} if self.mask_input and mask is not None else {}
        own = isinstance(self.embedding, WordEmbedding)
        with self.embedding.noise_scope(noise) if own and noise is not None else contextlib.nullcontext():
            hidden = tf.cast(self.backbone(inputs, training=noise is not None, **kwargs), tf.float32)  # (B, T, D)
        return hidden, None, {"raw_hidden": hidden, **(self.embedding.extras() if own else {})}

    @property
    def extras_provided(self) -> frozenset:
        variational = isinstance(self.embedding, WordEmbedding) and self.embedding.variational
        return frozenset({"raw_hidden", *(["log_alpha"] if variational else [])})

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Full-softmax log-probabilities (B, T, V) of ids (B, T)."""
        hidden, _, _ = self.forward(inputs)
        return tf.nn.log_softmax(self.full_logits(hidden))

    def embedding_matrix(self) -> Optional[tf.Tensor]:
        return None if self.embedding is None else local(self.embedding.embeddings.value)
