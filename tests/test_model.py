"""Model invariants: padding never counts, pad side does not matter, carried state == one long pass."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lmcli import losses
from lmcli.config import LossConfig, ModelConfig
from lmcli.model import LanguageModel, build_model
from lmcli.train.objective import Objective

V = 12


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    m = build_model(ModelConfig(vocab_size=V, embedding_dim=6, hidden=8, layers=2, proj_dim=5))
    m.compile(keras.optimizers.SGD(0.1), Objective(LossConfig()))
    return m


def per_row(model, rows):
    """NLL sum and token count of each row run alone, unpadded."""
    out = []
    for r in rows:
        x = np.array([r[:-1]], np.int32)
        y = np.array([r[1:]], np.int32)
        s = model.score(x, y, np.ones_like(x, np.float32))
        out.append((float(s["nll_sum"]), float(s["tokens"])))
    return out


def padded(rows, side, pad=0):
    width = max(len(r) for r in rows) - 1
    x = np.full((len(rows), width), pad, np.int32)
    y = np.full((len(rows), width), pad, np.int32)
    m = np.zeros((len(rows), width), np.float32)
    for i, r in enumerate(rows):
        n = len(r) - 1
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        x[i, sl], y[i, sl], m[i, sl] = r[:-1], r[1:], 1
    return x, y, m


ROWS = [[2, 5, 6, 7, 3], [2, 9, 3], [2, 4, 4, 8, 10, 11, 3]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_equals_rows_unpadded(model, side):
    x, y, m = padded(ROWS, side)
    s = model.score(x, y, m)
    singles = per_row(model, ROWS)
    total = sum(n for n, _ in singles)
    count = sum(c for _, c in singles)
    assert float(s["tokens"]) == count
    np.testing.assert_allclose(float(s["nll_sum"]), total, rtol=1e-5)


def train_loss_and_grads(model, x, y, m):
    with tf.GradientTape() as tape:
        hidden, _ = model(x, mask=tf.constant(m > 0))
        w, b = model.output_weights()
        flat_m = tf.reshape(tf.constant(m), [-1])
        per = losses.per_token(LossConfig(), w, b, tf.reshape(hidden, [-1, model.output_dim]), tf.reshape(y, [-1]),
                               flat_m)
        loss = losses.masked_mean(per, flat_m)
    grads = tape.gradient(loss, model.trainable_variables)
    return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]


def test_pad_side_and_padded_labels_change_nothing(model):
    xr, yr, mr = padded(ROWS, "right")
    xl, yl, ml = padded(ROWS, "left")
    loss_r, grads_r = train_loss_and_grads(model, xr, yr, mr)
    loss_l, grads_l = train_loss_and_grads(model, xl, yl, ml)
    y_noise = np.where(mr > 0, yr, 7).astype(np.int32)
    x_noise = np.where(mr > 0, xr, 5).astype(np.int32)
    loss_n, grads_n = train_loss_and_grads(model, x_noise, y_noise, mr)
    # The loss is the mean over real tokens, not over the padded grid.
    singles = per_row(model, ROWS)
    assert loss_r == pytest.approx(sum(n for n, _ in singles) / sum(c for _, c in singles), rel=1e-5)
    assert loss_l == pytest.approx(loss_r, rel=1e-5)
    assert loss_n == pytest.approx(loss_r, rel=1e-6)
    for a, b, c in zip(grads_r, grads_l, grads_n):
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(a, c, atol=1e-6)


def test_carried_state_equals_one_long_pass(model):
    rng = np.random.default_rng(3)
    seq = rng.integers(1, V, size=(2, 12)).astype(np.int32)
    long_hidden, long_state = model(seq)
    state, pieces = None, []
    for k in range(0, 12, 4):
        h, state = model(seq[:, k:k + 4], initial_state=state)
        pieces.append(h.numpy())
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), long_hidden.numpy(), atol=1e-5)
    for (h1, c1), (h2, c2) in zip(state, long_state):
        np.testing.assert_allclose(h1.numpy(), h2.numpy(), atol=1e-5)
        np.testing.assert_allclose(c1.numpy(), c2.numpy(), atol=1e-5)


def test_step_matches_full_pass(model):
    seq = np.array([[2, 5, 6, 7]], np.int32)
    hidden, _ = model(seq)
    want = tf.nn.log_softmax(model.full_logits(hidden)).numpy()[0]
    state = model.zero_state(1)
    for t in range(4):
        lp, state = model.step(tf.constant(seq[:, t]), state)
        np.testing.assert_allclose(lp.numpy()[0], want[t], atol=1e-5)


def test_tied_embeddings_share_the_matrix():
    m = build_model(ModelConfig(vocab_size=V, embedding_dim=5, hidden=8, proj_dim=5, tie_embeddings=True))
    w, b = m.output_weights()
    assert w is m.embedding.embeddings.value
    assert tuple(w.shape) == (V, 5) and tuple(b.shape) == (V,)


def test_get_config_round_trip_and_weights(tmp_path):
    cfg = ModelConfig(vocab_size=V, embedding_dim=4, hidden=6, layers=2, proj_dim=3, dropout=0.1)
    m = build_model(cfg)
    clone = LanguageModel.from_config(m.get_config())
    clone.build()
    assert clone.get_config() == m.get_config()
    ckpt = tf.train.Checkpoint(model=m).save(str(tmp_path / "c"))
    tf.train.Checkpoint(model=clone).restore(ckpt).assert_existing_objects_matched()
    x = np.array([[2, 3, 4]], np.int32)
    np.testing.assert_allclose(m(x)[0].numpy(), clone(x)[0].numpy())


def test_keras_fit_works_with_compile_without_loss(model):
    """fit() reports the step's masked-mean loss and token count, evaluate() the full-softmax mean NLL."""
    x, y, m = padded(ROWS, "right")
    ds = tf.data.Dataset.from_tensors({"inputs": x, "labels": y, "mask": m}).repeat(3)
    before = []

    class BeforeEachStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            s = model.score(x, y, m)
            before.append(float(s["nll_sum"]) / float(s["tokens"]))

    hist = model.fit(ds, epochs=1, verbose=0, callbacks=[BeforeEachStep()])
    assert len(before) == 3 and before[2] < before[0]  # it trains
    # train_step returns its own step's loss, so fit's history holds the last step's (computed before its update)
    assert hist.history["loss"][0] == pytest.approx(before[-1], rel=1e-5)
    assert hist.history["tokens"][0] == float(m.sum())
    after = model.score(x, y, m)
    evaluated = model.evaluate(ds, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(float(after["nll_sum"]) / float(after["tokens"]), rel=1e-5)
