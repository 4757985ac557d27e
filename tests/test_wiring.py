"""Wiring: the pieces are tested alone elsewhere; here each is checked through the path that calls it (the bound
strategy, `train_step`, the Trainer) against an independent computation, so that a caller that drops an argument,
ignores a flag or loses state fails a test.

Planted one at a time, each of these mistakes fails at least one test below:
  1. train_step ignores the carried state          -> test_pack_train_steps_carry_the_state_and_stop_its_gradient,
                                                      test_trainer_feeds_the_carried_state_batch_after_batch
  2. the sampled strategy skips the log-Q correction -> test_bound_sampled_strategy_matches_numpy
  3. the sampled strategy ignores the hit option    -> test_bound_sampled_strategy_matches_numpy
  4. train_step stops merging duplicate rows        -> test_train_step_applies_the_summed_gradient_of_repeated_rows
  5. TAPAS scores add b without dividing it by T    -> test_bound_tapas_divides_the_bias_by_the_temperature
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from lmcli import losses
from lmcli.config import DataConfig, LossConfig, ModelConfig
from lmcli.data.pipeline import make_batches
from lmcli.data.shards import open_data_dir
from lmcli.losses.context import StrategyContext
from lmcli.model import build_model
from lmcli.runtime.progress import Progress
from lmcli.train.objective import Objective
from lmcli.train.optim import make_optimizer
from lmcli.train.run import train

V = 12


class FixedSampler:
    """Always the same candidates; expected counts read from a fixed per-class vector q (not 1)."""

    def __init__(self, candidates, q) -> None:
        self.candidates = tf.constant(candidates, tf.int64)
        self.q = tf.constant(q, tf.float32)

    def sample(self, labels, mask, step):
        return self.candidates, tf.gather(self.q, tf.cast(labels, tf.int64)), tf.gather(self.q, self.candidates)

    def variables(self) -> list:
        return []


class Recorder(keras.optimizers.SGD):
    """Keeps the gradients handed to `apply` (as dense numpy arrays) and changes nothing."""

    def __init__(self) -> None:
        super().__init__(learning_rate=0.0)
        self.seen: list[list[np.ndarray]] = []

    def apply(self, grads, trainable_variables=None):
        self.seen.append([tf.convert_to_tensor(g).numpy() for g in grads])


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def tiny_model(seed=0, layers=2, **kw):
    keras.utils.set_random_seed(seed)
    return build_model(ModelConfig(vocab_size=V, embedding_dim=6, hidden=8, layers=layers, **kw))


def feed(x, y, state=None, step=0):
    out = {"inputs": tf.constant(x), "labels": tf.constant(y), "mask": tf.ones(x.shape, tf.float32),
           "step": tf.constant(step, tf.int64)}
    if state is not None:
        out["state"] = state
    return out


def full_nll_sum(model, hidden, labels):
    """Sum of full-softmax NLLs with W and b read straight from the variables (not through the output layer)."""
    w, b = model.output_weights()
    logits = tf.matmul(tf.reshape(hidden, [-1, model.output_dim]), w, transpose_b=True) + b  # (N, V)
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.reshape(labels, [-1]), logits))


# ---- 1. carried state: truncated BPTT ------------------------------------------------------------------------
def test_pack_train_steps_carry_the_state_and_stop_its_gradient():
    """Two train_steps on the halves of a sequence (state carried) give the gradient of one pass over the whole
    sequence with the gradient stopped at the boundary: g_a * n_a + g_b * n_b == d(sum of NLLs)."""
    model = tiny_model()
    recorder = Recorder()
    model.compile(recorder, Objective(LossConfig()), clip_norm=0.0)
    rng = np.random.default_rng(1)
    ids = rng.integers(3, V, size=(2, 11)).astype(np.int32)
    x, y = ids[:, :-1], ids[:, 1:]
    first = model.train_step(feed(x[:, :5], y[:, :5], model.zero_state(2)))
    second = model.train_step(feed(x[:, 5:], y[:, 5:], first["state"]))
    n = float(first["tokens"])
    got = [a * n + b * n for a, b in zip(*recorder.seen)]

    def reference(carry: bool):
        with tf.GradientTape() as tape:
            h1, state = model(x[:, :5])
            state = [tuple(tf.stop_gradient(t) for t in hc) for hc in state] if carry else None
            h2, _ = model(x[:, 5:], initial_state=state)
            total = full_nll_sum(model, h1, y[:, :5]) + full_nll_sum(model, h2, y[:, 5:])
        grads = tape.gradient(total, model.trainable_variables)
        return [tf.convert_to_tensor(g).numpy() for g in grads], total

    want, total = reference(carry=True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    assert float(first["loss"] + second["loss"]) * n == pytest.approx(float(total), rel=1e-5)
    fresh, _ = reference(carry=False)  # the check can tell a carried state from a dropped one
    assert max(np.abs(a - b).max() for a, b in zip(fresh, want)) > 1e-3


def test_trainer_feeds_the_carried_state_batch_after_batch(tiny_data_dir, tmp_path):
    """The Trainer's weights after 4 pack-mode SGD steps equal a hand-written loop over the same batches that
    carries the state from one batch to the next (and differ from one that resets it)."""
    opts = {"model": {"embedding_dim": 6, "hidden": 8}, "data": {"batch_size": 3, "seq_len": 4},
            "train": {"optimizer": "sgd", "lr": 0.5, "clip_norm": 0.0, "seed": 11, "max_steps": 4}}
    train(tiny_data_dir, tmp_path / "run", opts, progress=Progress())
    from lmcli.train.checkpoints import load_model

    trained, cfg, _ = load_model(tmp_path / "run", "latest")
    data = open_data_dir(tiny_data_dir)
    batches = make_batches(data.split("train"), DataConfig(batch_size=3, seq_len=4),
                           {"bos_id": data.bos_id, "eos_id": data.eos_id, "pad_id": data.pad_id})

    def by_hand(carry: bool):
        keras.utils.set_random_seed(11)
        model = build_model(cfg.model)
        model.compile(make_optimizer(cfg.train), Objective(cfg.loss), clip_norm=0.0, seed=11)
        state = model.zero_state(3)
        for k in range(4):
            out = model.train_step({**batches[k].as_dict(), "state": state, "step": tf.constant(k, tf.int64)})
            state = out["state"] if carry else model.zero_state(3)
        return [v.numpy() for v in model.weights]

    want = by_hand(carry=True)
    for a, b in zip([v.numpy() for v in trained.weights], want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    reset = by_hand(carry=False)
    assert max(np.abs(a - b).max() for a, b in zip(reset, want)) > 1e-4


# ---- 2 and 3. the bound sampled strategy ---------------------------------------------------------------------
@pytest.mark.parametrize("remove_hits", [True, False])
def test_bound_sampled_strategy_matches_numpy(remove_hits):
    """Through the registry's strategy: log-Q corrected logits with expected counts != 1, and an accidental hit
    removed or kept as the config says; padded tokens get 0."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(V, 4)).astype(np.float32)
    b = rng.normal(size=V).astype(np.float32)
    h = rng.normal(size=(5, 4)).astype(np.float32)
    y = np.array([3, 7, 3, 9, 1], np.int64)  # 3 and 7 are also candidates: accidental hits
    mask = np.array([1, 1, 1, 0, 1], np.float32)
    candidates = np.array([3, 5, 7, 10], np.int64)
    q = np.linspace(0.05, 0.9, V).astype(np.float32)  # expected counts, far from 1
    cfg = LossConfig(name="sampled", num_sampled=4, remove_accidental_hits=remove_hits)
    got = losses.per_token(cfg, w, b, h, y, mask, sampler=FixedSampler(candidates, q)).numpy()

    true = (h * w[y]).sum(-1) + b[y] - np.log(q[y])  # (N,)
    sampled = h @ w[candidates].T + b[candidates] - np.log(q[candidates])  # (N, S)
    if remove_hits:
        sampled[y[:, None] == candidates[None, :]] = -np.inf
    want = -np_log_softmax(np.concatenate([true[:, None], sampled], 1))[:, 0] * mask
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got[3] == 0.0


# ---- 4. duplicate rows merged before the optimizer -----------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adagrad", "sgd", "adam"])
def test_train_step_applies_the_summed_gradient_of_repeated_rows(optimizer):
    """Repeated input ids and labels give IndexedSlices with repeated rows (embedding, and W/b under sampled
    softmax). One train_step must equal the same optimizer applied to the dense (summed) gradient."""
    from lmcli.config import TrainConfig

    model = tiny_model(seed=3, layers=1)
    cfg = LossConfig(name="sampled", num_sampled=3)
    sampler = FixedSampler([2, 5, 8], np.full(V, 0.3, np.float32))
    model.compile(make_optimizer(TrainConfig(optimizer=optimizer, lr=0.1)),
                  Objective(cfg, ctx=StrategyContext(sampler)), clip_norm=0.0)
    x = np.array([[4, 4, 6, 4], [6, 4, 4, 9]], np.int32)
    y = np.array([[7, 7, 4, 7], [4, 7, 7, 7]], np.int32)
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = model.compute_objective(feed(x, y, model.zero_state(2)))[0]
    grads = tape.gradient(loss, variables)
    assert sum(isinstance(g, tf.IndexedSlices) and len(np.unique(g.indices)) < len(g.indices) for g in grads) >= 2
    copies = [keras.Variable(v.numpy()) for v in variables]
    reference = make_optimizer(TrainConfig(optimizer=optimizer, lr=0.1))
    reference.build(copies)
    reference.apply([tf.convert_to_tensor(g) for g in grads], copies)  # dense: repeated rows summed

    model.train_step(feed(x, y, model.zero_state(2)))
    for got, want in zip(variables, copies):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)


# ---- 5. TAPAS scores: (w.h + b) / T --------------------------------------------------------------------------
def test_bound_tapas_divides_the_bias_by_the_temperature():
    """One real row h = e0, T = 2, first-pass candidates 1, 2, 3, one kept. Scores (w.h + b) / T:
    class 1: (2 + 0) / 2 = 1.0; class 2: (0 + 1.5) / 2 = 0.75; class 3: -0.5  -> keeps 1.
    Adding b undivided would give class 2 a score of 1.5 and keep it instead."""
    w = np.array([[0.5, 0], [2, 0], [0, 0], [-1, 0]], np.float32)
    b = np.array([0, 0, 1.5, 0], np.float32)
    h = np.array([[1, 0], [9, 9]], np.float32)  # row 1 is padding: it neither votes nor costs
    y = np.array([0, 2], np.int64)
    mask = np.array([1, 0], np.float32)
    cfg = LossConfig(name="tapas", num_sampled=3, num_resampled=1, resampling_temperature=2.0,
                     tapas_correction="none")
    got = losses.per_token(cfg, w, b, h, y, mask, sampler=FixedSampler([1, 2, 3], np.ones(4, np.float32))).numpy()
    keeps_1 = math.log(math.exp(0.5) + math.exp(2.0)) - 0.5  # logits: label 0.5, class 1: 2.0
    keeps_2 = math.log(math.exp(0.5) + math.exp(1.5)) - 0.5
    assert got[0] == pytest.approx(keeps_1, rel=1e-6) and got[0] != pytest.approx(keeps_2, rel=1e-3)
    assert got[1] == 0.0
