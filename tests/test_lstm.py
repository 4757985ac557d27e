"""lmcli's LSTM layer (`model/lstm.py`) against Keras' own LSTM with the same weights: outputs, final states and
every gradient, with and without masks and initial states, eagerly and traced, in float32 and half precision."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lmcli.model.lstm import LSTM

B, T, E, H = 3, 7, 5, 4
LEFT = np.array([[0, 0, 1, 1, 1, 1, 1], [1] * 7, [0, 1, 1, 1, 1, 1, 1]]) > 0
RIGHT = np.array([[1, 1, 1, 1, 1, 0, 0], [1] * 7, [1, 1, 1, 0, 0, 0, 0]]) > 0
MIXED = np.array([[1, 0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1], [1] * 7]) > 0


def _pair(dtype=None, **kwargs):
    """(Keras' LSTM, lmcli's) with the same random weights (biases too, not only Keras' initial ones)."""
    rng = np.random.default_rng(0)
    layers = [cls(H, return_sequences=True, return_state=True, dtype=dtype, **kwargs) for cls in
              (keras.layers.LSTM, LSTM)]
    for layer in layers:
        layer.build((None, None, E))
    for ref, own in zip(*(layer.weights for layer in layers)):
        value = rng.normal(0, 0.5, ref.shape).astype(np.float32)
        ref.assign(value)
        own.assign(value)
    return layers


def _run(layer, x, mask, state, upstream):
    """(output, h, c, then the gradients of x, h0, c0 and every weight) of a weighted sum of all three outputs."""
    with tf.GradientTape() as tape:
        tape.watch([x, *state])
        out, h, c = layer(x, initial_state=state or None, mask=mask)
        loss = sum(tf.reduce_sum(tf.cast(t, tf.float32) * u) for t, u in zip((out, h, c), upstream))
    grads = tape.gradient(loss, [x, *state, *layer.weights])
    return [tf.cast(t, tf.float32) for t in (out, h, c, *grads)]


def _inputs(seed=1):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(B, T, E)), tf.float32)
    state = [tf.constant(rng.normal(size=(B, H)), tf.float32) for _ in range(2)]
    upstream = [tf.constant(rng.normal(size=s), tf.float32) for s in ((B, T, H), (B, H), (B, H))]
    return x, state, upstream


@pytest.mark.parametrize("mask", [None, LEFT, RIGHT, MIXED], ids=["none", "left", "right", "holes"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero state", "given state"])
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "tf.function"])
def test_matches_keras_lstm_values_and_gradients(mask, with_state, traced):
    ref, own = _pair()
    assert own._own_loop()
    x, state, upstream = _inputs()
    state = state if with_state else []
    run = tf.function(_run, reduce_retracing=True) if traced else _run
    expected, got = ([t.numpy() for t in run(layer, x, mask, state, upstream)] for layer in (ref, own))
    assert len(got) == 3 + 1 + len(state) + 3
    for name, e, g in zip(["out", "h", "c", "dx", *["dstate"] * len(state), "dkernel", "drecurrent", "dbias"],
                          expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_half_precision_computes_in_half_with_float32_gradients(policy):
    """Both layers round differently in half precision; they agree to its precision, and lmcli's gradients stay
    float32 (the variables')."""
    ref, own = _pair(keras.DTypePolicy(policy))
    x, state, upstream = _inputs()
    out, _, _ = own(x, mask=LEFT)
    assert out.dtype == policy.split("_")[1]
    expected, got = ([t.numpy() for t in _run(layer, x, LEFT, [], upstream)] for layer in (ref, own))
    tol = 2e-2 if policy == "mixed_bfloat16" else 3e-3
    for e, g in zip(expected, got):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol * max(1.0, np.abs(e).max()))


def test_last_output_only_matches_keras():
    """`return_sequences=False` (a backbone's last state as its output): the value and gradients are Keras'."""
    x, state, _ = _inputs()
    results = []
    for layer in _pair():  # the same weights in a layer returning the last output only
        single = type(layer)(H)
        single.build((None, None, E))
        for w, v in zip(single.weights, layer.weights):
            w.assign(v)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = single(x, mask=RIGHT)
            loss = tf.reduce_sum(out * tf.range(1.0, H + 1.0))
        results.append([out.numpy(), *(g.numpy() for g in tape.gradient(loss, [x, *single.weights]))])
    for e, g in zip(*results):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("option", [{"go_backwards": True}, {"zero_output_for_mask": True}], ids=str)
def test_configurations_it_does_not_compute_fall_back_to_keras(option):
    """Layer options outside lmcli's loop (a reversed sequence, zeros on masked steps) run Keras' own loop."""
    ref, own = _pair(**option)
    assert not own._own_loop()
    x, state, upstream = _inputs()
    for e, g in zip(*(_run(layer, x, RIGHT, state, upstream) for layer in (ref, own))):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-6, atol=1e-6)


def test_serialises_as_lmclis_layer():
    layer = LSTM(H, return_sequences=True)
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(again) is LSTM and again.units == H and again.return_sequences


def test_a_backbone_with_it_trains_and_exports_through_lmcli_keras(tmp_path):
    """`lk.LSTM` in a user's backbone: `fit` trains it (finite losses), and the export (the loop and its custom
    gradient traced into a SavedModel) reloads without keras and gives the model's log-probabilities to 1e-5."""
    import lmcli.keras as lk

    vocab = 50
    backbone = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(vocab, 8),
                                 lk.LSTM(16, return_sequences=True)])
    model = lk.BackboneModel(backbone, vocab_size=vocab, dim=16)
    model.build()
    model.compile(lk.LazyAdam(1e-2), lk.objective(model, "sampled", unigram_counts=np.ones(vocab, np.int64),
                                                  num_sampled=10))
    ids = np.random.default_rng(0).integers(0, vocab, (8, 6)).astype(np.int32)
    history = model.fit(tf.data.Dataset.from_tensor_slices((ids[:, :-1], ids[:, 1:])).batch(4), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    report = lk.export(model, tmp_path / "export")
    assert report["verified"] and report["max_abs_diff"] <= 1e-5, report
