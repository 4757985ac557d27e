"""Before and after: sampled softmax in Keras by smuggling the labels in as a second input, then the same model on
`lmcli.keras`.

Before (the usual workaround): the labels are a model input, a layer holding W and b calls
`tf.nn.sampled_softmax_loss` and `add_loss`es it, `compile()` gets no loss, and evaluation needs a second model
that shares the weights and computes the full softmax by hand. The mean is over the padded grid (padding counts),
and the padded labels are sampled against like real ones.

After: the backbone alone; `lk.BackboneModel` owns W and b, `lk.objective` is the sampled softmax with its log-Q
correction and accidental-hit removal, the mean is over real tokens, and `evaluate` is the full softmax on the
same weights.

    python examples/labels_as_input.py [--tiny]

Prints one JSON line: each version's full-softmax perplexity on the held-out rows (over real tokens).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import lmcli.keras as lk

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = Path(__file__).resolve().parent


# ---- before ------------------------------------------------------------------------------------------------------
class SampledSoftmaxLoss(keras.layers.Layer):
    """Holds W (V, D) and b (V,); adds the sampled softmax loss of (hidden, labels) and passes hidden through."""

    def __init__(self, vocab: int, num_sampled: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.vocab, self.num_sampled = vocab, num_sampled

    def build(self, input_shape) -> None:
        dim = input_shape[0][-1]
        self.w = self.add_weight(name="w", shape=(self.vocab, dim), initializer="glorot_uniform")
        self.b = self.add_weight(name="b", shape=(self.vocab,), initializer="zeros")

    def call(self, inputs):
        hidden, labels = inputs  # (B, T, D), (B, T)
        flat = tf.reshape(hidden, [-1, tf.shape(hidden)[-1]])  # (N, D)
        loss = tf.nn.sampled_softmax_loss(self.w, self.b, tf.reshape(labels, [-1, 1]), flat, self.num_sampled,
                                          self.vocab)  # (N,): padding included
        self.add_loss(tf.reduce_mean(loss))
        return hidden


def before(train, valid, vocab, dim, hidden, epochs) -> float:
    ids, labels = keras.Input((None,), dtype="int32"), keras.Input((None,), dtype="int32")
    embed, rnn = keras.layers.Embedding(vocab, dim), keras.layers.GRU(hidden, return_sequences=True)
    sampled = SampledSoftmaxLoss(vocab, vocab // 10)
    trainer = keras.Model([ids, labels], sampled([rnn(embed(ids)), labels]))
    trainer.compile(keras.optimizers.Adam(3e-3))
    trainer.fit(train.map(lambda x, y, m: ((x, y),)), epochs=epochs, verbose=0)
    # evaluation: a second model on the same layers, the full softmax written by hand, the mask applied by hand
    nll = tokens = 0.0
    for x, y, m in valid:
        logits = tf.einsum("btd,vd->btv", rnn(embed(x)), sampled.w) + sampled.b  # (B, T, V)
        token_nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)  # (B, T)
        nll, tokens = nll + float(tf.reduce_sum(token_nll * m)), tokens + float(tf.reduce_sum(m))
    return float(np.exp(nll / tokens))


# ---- after -------------------------------------------------------------------------------------------------------
def after(train, valid, vocab, dim, hidden, epochs, counts) -> float:
    backbone = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(vocab, dim),
                                 keras.layers.GRU(hidden, return_sequences=True)])
    model = lk.BackboneModel(backbone, vocab, hidden)
    model.build()
    model.compile(keras.optimizers.Adam(3e-3),
                  lk.objective(model, "sampled", unigram_counts=counts, num_sampled=vocab // 10))
    model.fit(train, epochs=epochs, verbose=0)
    return float(np.exp(model.evaluate(valid, verbose=0, return_dict=True)["loss"]))


def main() -> None:
    import sys

    sys.path.insert(0, str(EXAMPLES))
    from gru_sampled import dataset, windows

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args()
    text = (ROOT / "sample_data" / "corpus.txt").read_text()
    vocab, dim, hidden, batch = (200, 16, 32, 8) if a.tiny else (2000, 128, 256, 32)
    if a.tiny:
        text = " ".join(text.split()[:6000])
    grid, real, _ = windows(text, vocab, 12 if a.tiny else 35)
    split = max(1, len(grid) * 9 // 10)
    train, valid = dataset(grid[:split], real[:split], batch), dataset(grid[split:], real[split:], batch)
    counts = np.bincount(grid[:split].ravel(), minlength=vocab)
    keras.utils.set_random_seed(1)
    old = before(train, valid, vocab, dim, hidden, a.epochs)
    keras.utils.set_random_seed(1)
    new = after(train, valid, vocab, dim, hidden, a.epochs, counts)
    print(json.dumps({"before_valid_perplexity": old, "after_valid_perplexity": new, "vocab": vocab}))


if __name__ == "__main__":
    main()
