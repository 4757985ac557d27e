"""A GRU language model trained with lmcli's sampled softmax under `fit`, evaluated with the full softmax on the
same weights, and exported with the CLI's `log_probs` and `score` signatures.

What it shows of `lmcli.keras`:
- a user's own backbone (Embedding -> GRU) in front of lmcli's output layer W [V, D], b [V];
- `--loss sampled`'s equivalent: `lk.objective(model, "sampled", unigram_counts=..., num_sampled=...)`;
- a masked mean over real tokens: the batch's third element marks padding;
- a term weighted by the epoch: lmcli's variational embedding brings the kl term, whose weight ramps up over
  `kl_warmup_epochs`; `lk.EpochClock()` feeds `fit`'s fractional epoch to it;
- `lk.LazyAdam`, and `lk.export`, reloaded here with plain TensorFlow.

    python examples/gru_sampled.py [--text FILE] [--epochs 3] [--tiny]

With no --text it trains on sample_data/corpus.txt (word level, the most frequent words). --tiny: a few steps
on a small model (the tests run it so). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import lmcli.keras as lk

ROOT = Path(__file__).resolve().parent.parent


def windows(text: str, vocab: int, seq: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Word ids (0 = out of vocabulary) cut into rows of seq + 1; the last row is padded with mask 0."""
    words = text.split()
    keep = {w: i + 1 for i, (w, _) in enumerate(Counter(words).most_common(vocab - 1))}
    ids = np.array([keep.get(w, 0) for w in words], np.int32)
    rows = -(-len(ids) // (seq + 1))
    grid = np.zeros(rows * (seq + 1), np.int32)
    grid[:len(ids)] = ids
    real = np.zeros(rows * (seq + 1), np.float32)
    real[:len(ids)] = 1.0
    return grid.reshape(rows, seq + 1), real.reshape(rows, seq + 1), len(ids)


def dataset(grid: np.ndarray, real: np.ndarray, batch: int) -> tf.data.Dataset:
    """(inputs, labels, mask) batches: labels are the inputs shifted by one; mask 0 at padding."""
    return tf.data.Dataset.from_tensor_slices((grid[:, :-1], grid[:, 1:], real[:, 1:])).batch(batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", type=Path, default=ROOT / "sample_data" / "corpus.txt")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="a small model on the first 6,000 words")
    a = p.parse_args()
    text = a.text.read_text()
    vocab, dim, hidden, seq, batch = (200, 16, 32, 12, 8) if a.tiny else (2000, 128, 256, 35, 32)
    if a.tiny:
        text = " ".join(text.split()[:6000])
    grid, real, tokens = windows(text, vocab, seq)
    split = max(1, len(grid) * 9 // 10)
    train, valid = dataset(grid[:split], real[:split], batch), dataset(grid[split:], real[split:], batch)

    keras.utils.set_random_seed(1)
    embedding = lk.Embedding(vocab, dim, variational=True)  # lmcli's: its noise applies in train_step only
    backbone = keras.Sequential([keras.Input((None,), dtype="int32"), embedding,
                                 keras.layers.GRU(hidden, return_sequences=True)])
    model = lk.BackboneModel(backbone, vocab, hidden, embedding=embedding)
    model.build()
    counts = np.bincount(grid[:split].ravel(), minlength=vocab)
    objective = lk.objective(model, "sampled", unigram_counts=counts, seed=1, num_sampled=vocab // 10,
                             kl_warmup_epochs=2.0)
    model.compile(lk.LazyAdam(3e-3), objective, clip_norm=1.0, seed=1, train_tokens=tokens)
    history = model.fit(train, epochs=a.epochs, callbacks=[lk.EpochClock()], verbose=0)
    nats = model.evaluate(valid, verbose=0, return_dict=True)["loss"]  # full softmax, mean over real tokens

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        lk.export(model, out)
        reloaded = tf.saved_model.load(str(out))
        ids = tf.constant(grid[split:split + 2, :-1])
        served = reloaded.signatures["log_probs"](ids=ids)["log_probs"].numpy()
        same = float(np.max(np.abs(served - model(ids).numpy())))
    print(json.dumps({"valid_perplexity": float(np.exp(nats)), "vocab": vocab,
                      "kl_weight_by_epoch": [round(float(w), 4) for w in history.history["kl_weight"]],
                      "train_loss_by_epoch": [round(float(x), 4) for x in history.history["loss"]],
                      "export_max_abs_diff": same}))


if __name__ == "__main__":
    main()
