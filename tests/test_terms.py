"""Loss terms against numpy and hand-checked cases: the embedding term, ar/tar, the kl term, and how the objective
adds them to the strategy's loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from lmcli.config import LossConfig, TermsConfig
from lmcli.losses.context import Clock, LossInputs, StrategyContext, StrategyOutput
from lmcli.runtime.errors import ConfigError
from lmcli.terms import TERMS, activation, embedding, variational
from lmcli.train.objective import Objective

RNG = np.random.default_rng(0)
V, E, N = 9, 4, 5
EMB = RNG.normal(size=(V, E)).astype(np.float32)
LABELS = np.array([1, 4, 4, 7, 2], np.int64)


def np_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def np_cosine_distance(a, b):
    return 1 - (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def inputs(labels=LABELS, emb=EMB, mask=None, **kw) -> LossInputs:
    n = len(labels)
    defaults = dict(weights=tf.zeros([V, E]), bias=tf.zeros([V]), hidden=tf.zeros([n, E]), labels=tf.constant(labels),
                    mask=tf.ones([n]) if mask is None else tf.constant(mask, tf.float32),
                    clock=Clock(tf.constant(0, tf.int64)), embeddings=emb)
    return LossInputs(**{**defaults, **kw})


def full_output(logits) -> StrategyOutput:
    logits = logits if isinstance(logits, tf.Variable) else tf.constant(logits, tf.float32)
    return StrategyOutput(tf.zeros([N]), logits)


# ---- the embedding term ----------------------------------------------------------------------------------------
def test_one_hot_logits_give_exactly_the_embedding_of_the_argmax():
    top = np.array([3, 4, 0, 7, 2])
    logits = np.eye(V, dtype=np.float32)[top] * 1e9  # (N, V)
    p = tf.exp(embedding.sharpened_log_probs(tf.constant(logits), 4.0, 1))
    predicted = embedding.expected_embedding(p, full_output(logits), tf.constant(EMB), tf.constant(LABELS)).numpy()
    np.testing.assert_array_equal(predicted, EMB[top])
    got = embedding.term(inputs(), full_output(logits), TermsConfig()).numpy()
    want = np_cosine_distance(EMB[top], EMB[LABELS])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[1] == pytest.approx(0.0, abs=1e-6) and got[4] == pytest.approx(0.0, abs=1e-6)  # argmax == label


@pytest.mark.parametrize("distance", ["cosine", "mse"])
def test_power_one_is_the_softmax_weighted_embedding(distance):
    logits = RNG.normal(size=(N, V)).astype(np.float32)
    got = embedding.term(inputs(), full_output(logits), TermsConfig(aux_power=1.0, aux_distance=distance)).numpy()
    predicted = np_softmax(logits.astype(np.float64)) @ EMB
    target = EMB[LABELS]
    want = np_cosine_distance(predicted, target) if distance == "cosine" else ((predicted - target) ** 2).mean(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sharpening_rounds_against_numpy():
    logits = RNG.normal(size=(N, V))
    p = np_softmax(logits)
    for _ in range(2):
        p = p ** 3 / (p ** 3).sum(-1, keepdims=True)
    got = tf.exp(embedding.sharpened_log_probs(tf.constant(logits, tf.float32), 3.0, 2)).numpy()
    np.testing.assert_allclose(got, p, rtol=1e-4, atol=1e-7)


def np_term_gradient(z, power, rounds, label):
    """d(1 - cos(q @ E, E[label])) / dz for one row z (V,), in float64: R rounds of p <- p^K / sum p^K are
    q = softmax(K^R z), so the gradient is K^R (q * (g - q . g)) with g = d distance / dq = E @ d distance / d pred."""
    sharp = power ** rounds
    q = np_softmax(sharp * z)
    pred, target = q @ EMB, EMB[label]
    cos = pred @ target / np.linalg.norm(pred) / np.linalg.norm(target)
    d_pred = -(target / np.linalg.norm(pred) / np.linalg.norm(target) - cos * pred / np.linalg.norm(pred) ** 2)
    g = EMB @ d_pred  # (V,)
    return sharp * q * (g - q @ g)


def test_power_200_gradient_is_exactly_zero_where_p_is_one_hot_and_amplified_near_ties():
    """At --aux-power 200, p = softmax(200 z) is exactly one-hot in float32 once the top logit leads by 0.6 nats
    (e^-120 underflows even as a denormal), and then the term's gradient is exactly 0: it teaches nothing there.
    Near a tie (a 0.004-nat lead) it is K = 200 times the softmax Jacobian's, as the closed form says, far above
    what power 1 gives."""
    z = RNG.normal(size=(N, V)).astype(np.float32)
    z[:, 0] = z.max(axis=1) + np.array([0.6, 1.0, 3.0, 0.004, 0.0])  # rows 0-2 clear leads, row 3 a near tie,
    z[4, 1] = z[4, 0]  # row 4 an exact tie between classes 0 and 1
    logits = tf.Variable(z)
    grads = {}
    for power in (200.0, 1.0):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(embedding.term(inputs(), full_output(logits), TermsConfig(aux_power=power)))
        grads[power] = tape.gradient(value, logits).numpy()
    assert np.all(np.isfinite(grads[200.0]))
    p = tf.exp(embedding.sharpened_log_probs(tf.constant(z), 200.0, 1)).numpy()
    assert np.all(p[:3].max(axis=1) == 1.0) and np.all(grads[200.0][:3] == 0.0)  # one-hot: exactly no gradient
    for row in (3, 4):
        want = np_term_gradient(z[row].astype(np.float64), 200.0, 1, LABELS[row])
        np.testing.assert_allclose(grads[200.0][row], want, rtol=2e-3, atol=1e-6 * np.abs(want).max())
        assert np.abs(grads[200.0][row]).max() > 20 * np.abs(grads[1.0][row]).max()
    assert np.abs(grads[1.0]).min(axis=1).max() > 0  # power 1 moves every logit of every row


def test_sampled_strategy_term_uses_label_and_candidates_and_its_gradients_stay_on_their_rows():
    """Under --loss sampled the term's p covers [label, candidates]; its gradients of E and W are IndexedSlices on
    the label and candidate rows only."""

    class Fixed:
        def sample(self, labels, mask, step):
            c = tf.constant([0, 5, 6], tf.int64)
            return c, tf.ones(tf.shape(labels)), tf.ones([3])

    w = tf.Variable(RNG.normal(size=(V, E)).astype(np.float32))
    emb = tf.Variable(EMB)
    hidden = tf.constant(RNG.normal(size=(N, E)).astype(np.float32))
    mask = np.array([1, 1, 0, 1, 1], np.float32)
    objective = Objective(LossConfig(name="sampled", num_sampled=3), TermsConfig(aux_power=1.0, aux_weight=1.0),
                          ("embedding",), StrategyContext(Fixed()))
    with tf.GradientTape(persistent=True) as tape:
        _, sums, _ = objective(inputs(weights=w, bias=tf.zeros([V]), hidden=hidden, emb=emb, mask=mask))
        term = sums["embedding"]
    for var in (emb, w):
        grad = tape.gradient(term, var)
        assert isinstance(grad, tf.IndexedSlices)
        assert set(grad.indices.numpy()) <= set(LABELS[mask > 0]) | {0, 5, 6}
    # numpy: logits over [label, 0, 5, 6], accidental hits (none here) removed, p @ E[those rows]
    real = mask > 0
    cols = np.concatenate([LABELS[:, None], np.tile([0, 5, 6], (N, 1))], 1)  # (N, 4)
    logits = np.einsum("nd,ncd->nc", hidden.numpy(), w.numpy()[cols])
    p = np_softmax(logits)
    predicted = np.einsum("nc,nce->ne", p, EMB[cols])
    want = np_cosine_distance(predicted, EMB[LABELS])[real].mean()
    assert float(term) == pytest.approx(want, rel=1e-5)


def test_under_sampled_softmax_the_term_sharpens_the_log_q_corrected_logits():
    """Under sampled/TAPAS the term's p is the softmax over [label, candidates] of w . h + b - log Q, the strategy's
    corrected logits: not the model's distribution over those classes. With unequal Q the two differ."""
    q_true, q_cand = 0.5, np.array([0.9, 0.05, 0.3], np.float32)

    class Fixed:
        def sample(self, labels, mask, step):
            return tf.constant([0, 5, 6], tf.int64), tf.fill(tf.shape(labels), q_true), tf.constant(q_cand)

    w = RNG.normal(size=(V, E)).astype(np.float32)
    hidden = RNG.normal(size=(N, E)).astype(np.float32)
    labels = np.array([1, 4, 4, 7, 2], np.int64)  # no label among the candidates: no accidental hits
    objective = Objective(LossConfig(name="sampled", num_sampled=3), TermsConfig(aux_power=1.0, aux_weight=1.0),
                          ("embedding",), StrategyContext(Fixed()))
    _, sums, _ = objective(inputs(labels=labels, weights=tf.constant(w), hidden=tf.constant(hidden)))
    cols = np.concatenate([labels[:, None], np.tile([0, 5, 6], (N, 1))], 1)  # (N, 4)
    raw = np.einsum("nd,ncd->nc", hidden, w[cols]).astype(np.float64)  # (N, 4) the model's logits
    corrected = raw - np.log(np.concatenate([[q_true], q_cand]))[None, :]

    def mean_distance(logits):
        return np_cosine_distance(np.einsum("nc,nce->ne", np_softmax(logits), EMB[cols]), EMB[labels]).mean()

    assert float(sums["embedding"]) == pytest.approx(mean_distance(corrected), rel=1e-5)
    assert abs(mean_distance(corrected) - mean_distance(raw)) > 0.01


# ---- ar and tar -------------------------------------------------------------------------------------------------
def test_ar_and_tar_against_numpy_with_padding():
    raw = RNG.normal(size=(2, 4, 3)).astype(np.float32)  # (B, T, H)
    hidden = RNG.normal(size=(8, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [0, 1, 1, 1]], np.float32)  # a right- and a left-padded row
    bundle = inputs(labels=np.zeros(8, np.int64), mask=mask.reshape(-1), hidden=tf.constant(hidden),
                    extras={"raw_hidden": tf.constant(raw)})
    np.testing.assert_allclose(activation.ar_term(bundle, None, TermsConfig()).numpy(), (hidden ** 2).mean(-1),
                               rtol=1e-6)
    want = np.zeros((2, 4))
    for b in range(2):
        for t in range(1, 4):
            if mask[b, t] and mask[b, t - 1]:
                want[b, t] = ((raw[b, t] - raw[b, t - 1]) ** 2).mean()
    np.testing.assert_allclose(activation.tar_term(bundle, None, TermsConfig()).numpy(), want.reshape(-1), rtol=1e-6)


# ---- the kl term of the variational embedding -------------------------------------------------------------------
EULER_GAMMA = 0.5772156649015329


def exact_kl(log_alpha: float) -> float:
    """KL of w = theta (1 + sqrt(alpha) eps) from the log-uniform prior, in closed form (no approximation).

    -KL = 0.5 log alpha - E log|1 + sqrt(alpha) eps| + C. With X = 1 + sqrt(alpha) eps ~ N(1, alpha), X^2 / alpha is
    noncentral chi-square with 1 degree of freedom and noncentrality 1/alpha, whose log has the expectation
    log 2 + sum_j Poisson(j; 1/(2 alpha)) psi(1/2 + j), psi(1/2 + j) = -gamma - 2 log 2 + sum_{i<=j} 2/(2i - 1).
    So -KL = -0.5 (E log chi'^2 + gamma + log 2), C chosen so that KL -> 0 as alpha -> infinity (as the paper).
    """
    mu = 0.5 * math.exp(-log_alpha)  # the Poisson mean, half the noncentrality
    j = np.arange(int(mu + 12 * math.sqrt(mu) + 30))
    weights = np.exp(-mu + j * math.log(mu) - np.array([math.lgamma(k + 1.0) for k in j]))
    psi = -EULER_GAMMA - 2 * math.log(2) + np.concatenate([[0.0], np.cumsum(2.0 / (2 * j[1:] - 1))])
    assert weights.sum() == pytest.approx(1.0, abs=1e-9)  # the series is summed far enough
    return 0.5 * (math.log(2) + (weights * psi).sum() + EULER_GAMMA + math.log(2))


def test_kl_is_within_0_01_of_the_closed_form_and_clipped_outside_8():
    """Molchanov et al.'s fit is within 0.01 of the exact KL over [-8, 8] (measured: 0.0094 at log alpha = -3.5);
    outside, log alpha is clipped, so the KL is that of -8 or 8."""
    log_alpha = np.linspace(-8.0, 8.0, 65)
    got = variational.kl_per_word(tf.constant(log_alpha, tf.float32)).numpy()
    want = np.array([exact_kl(x) for x in log_alpha])
    np.testing.assert_allclose(got, want, rtol=0, atol=0.01)
    assert want[0] == pytest.approx(4.635, abs=1e-3) and want[-1] == pytest.approx(2e-4, abs=1e-4)  # the ends
    beyond = variational.kl_per_word(tf.constant([-12.0, -8.0, 8.0, 11.0])).numpy()
    assert beyond[0] == beyond[1] and beyond[2] == beyond[3]
    assert np.all(np.diff(got) < 0)  # more noise, less KL


def test_kl_term_is_the_sum_over_words_divided_by_the_training_tokens():
    log_alpha = np.array([-12.0, -8.0, -3.0, 0.0, 2.5, 8.0, 11.0], np.float32)
    bundle = inputs(extras={"log_alpha": tf.constant(log_alpha)}, train_tokens=1000)
    got = float(variational.term(bundle, None, TermsConfig()))
    want = sum(exact_kl(x) for x in np.clip(log_alpha, -8, 8)) / 1000
    assert got == pytest.approx(want, abs=7 * 0.01 / 1000)
    stats = variational.stats(bundle, TermsConfig())
    assert float(stats["noise_share"]) == pytest.approx(2 / 7)  # 8 and 11 (clipped to 8) are above 3
    assert float(stats["mean_alpha"]) == pytest.approx(np.exp(np.clip(log_alpha, -8, 8)).mean(), rel=1e-5)


@pytest.mark.parametrize("epoch, want", [(0.0, 0.0), (0.5, 0.75 * 0.5 / 1.5), (1.5, 0.75), (4.0, 0.75)])
def test_kl_weight_ramps_linearly_over_the_warmup_epochs(epoch, want):
    cfg = TermsConfig(kl_weight=0.75, kl_warmup_epochs=1.5)
    got = float(variational.weight(Clock(tf.constant(0, tf.int64), tf.constant(epoch)), cfg))
    assert got == pytest.approx(want, rel=1e-6)
    assert float(variational.weight(Clock(tf.constant(0, tf.int64), 0.0), TermsConfig(kl_warmup_epochs=0))) == 1.0


# ---- the objective -----------------------------------------------------------------------------------------------
def test_objective_adds_weighted_terms_and_divides_by_the_given_token_count():
    """loss = masked mean of the strategy + weight * masked mean of per-token terms + weight * scalar terms; with a
    global count and R replicas, each replica's share adds up to the one-device value."""
    w = RNG.normal(size=(V, E)).astype(np.float32)
    hidden = RNG.normal(size=(N, E)).astype(np.float32)
    raw = RNG.normal(size=(1, N, 3)).astype(np.float32)
    mask = np.array([1, 1, 0, 1, 1], np.float32)
    log_alpha = RNG.normal(size=V).astype(np.float32)
    bundle = inputs(weights=tf.constant(w), hidden=tf.constant(hidden), mask=mask, train_tokens=50,
                    extras={"raw_hidden": tf.constant(raw), "log_alpha": tf.constant(log_alpha)},
                    clock=Clock(tf.constant(3, tf.int64), tf.constant(0.25)))
    cfg = TermsConfig(aux_loss=("ar",), ar_alpha=0.5, kl_weight=2.0, kl_warmup_epochs=1.0)
    objective = Objective(LossConfig(), cfg, ("ar", "kl"), provided=frozenset({"raw_hidden", "log_alpha"}))
    loss, sums, facts = objective(bundle)
    nll = -np.log(np_softmax(hidden @ w.T)[np.arange(N), LABELS])
    strategy = (nll * mask).sum() / mask.sum()
    ar = ((hidden ** 2).mean(-1) * mask).sum() / mask.sum()
    kl = variational.kl_per_word(tf.constant(log_alpha)).numpy().sum() / 50  # the kl itself: tested above
    assert float(sums["strategy_loss"]) == pytest.approx(strategy, rel=1e-5)
    assert float(sums["ar"]) == pytest.approx(ar, rel=1e-5) and float(sums["kl"]) == pytest.approx(kl, rel=1e-5)
    assert float(facts["ar_weight"]) == 0.5 and float(facts["kl_weight"]) == pytest.approx(0.5)
    assert float(loss) == pytest.approx(strategy + 0.5 * ar + 0.5 * kl, rel=1e-5)
    # two replicas, each with half of the tokens, the global count and the scalar halved: the shares add up
    halves = [objective(inputs(weights=tf.constant(w), hidden=tf.constant(hidden[rows]), labels=LABELS[rows],
                               mask=mask[rows], train_tokens=50, clock=bundle.clock,
                               extras={"raw_hidden": tf.constant(raw[:, rows]), "log_alpha": tf.constant(log_alpha)}),
                        count=tf.constant(mask.sum()), replicas=2)[0] for rows in ([0, 1], [2, 3, 4])]
    assert float(halves[0] + halves[1]) == pytest.approx(float(loss), rel=1e-5)


def test_term_registry_errors():
    with pytest.raises(ConfigError, match="unknown loss term 'nope'"):
        Objective(LossConfig(), TermsConfig(), ("nope",))
    with pytest.raises(ConfigError, match="the kl term needs --variational-embedding"):
        Objective(LossConfig(), TermsConfig(), ("kl",), provided=frozenset({"raw_hidden"}))
    with pytest.raises(ConfigError, match="the kl term comes with --variational-embedding"):
        TermsConfig(aux_loss=("kl",)).validate()
    assert set(TERMS) == {"embedding", "ar", "tar", "kl"}


def test_per_row_candidate_sets_weight_each_row_by_its_own_candidates():
    """With `--candidate-sets row` (classes (R, C')), token t of batch row r mixes its label's embedding and row r's
    candidates' embeddings, as numpy computes it row by row."""
    rng = np.random.default_rng(7)
    classes = np.array([[1, 5, 6], [0, 2, 7]])  # (R=2, C'=3): 4 tokens per row below
    labels = np.array([3, 4, 0, 7, 2, 1, 5, 6])
    p = rng.dirichlet(np.ones(4), size=8).astype(np.float32)  # (M=8, 1 + C')
    out = StrategyOutput(tf.zeros([8]), tf.math.log(tf.constant(p)), None, tf.constant(classes), label_first=True)
    got = embedding.expected_embedding(tf.constant(p), out, tf.constant(EMB), tf.constant(labels)).numpy()
    want = np.stack([p[t, 0] * EMB[labels[t]] + p[t, 1:] @ EMB[classes[t // 4]] for t in range(8)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
