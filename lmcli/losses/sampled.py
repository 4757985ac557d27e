"""Sampled softmax, per token, on W [V, D] and b [V] directly (rows gathered, nothing transposed).

For each real token j with label y_j and shared candidates s_1..s_S:
    true logit    t_j  = w_{y_j} . h_j + b_{y_j} - log Q(y_j)
    sampled logit u_jk = w_{s_k} . h_j + b_{s_k} - log Q(s_k)      (-1e9 where s_k == y_j, if removing hits)
    loss_j = logsumexp([t_j, u_j1..u_jS]) - t_j
Q is the expected count of a class in the candidate set (the log-Q correction). With every class as a
candidate and Q = 1 this is exactly the full softmax. Padded tokens take no part and get loss 0.
"""

from __future__ import annotations

import tensorflow as tf

from lmcli.config import LossConfig
from lmcli.losses.context import LossInputs, StrategyContext, StrategyOutput, scatter_rows
from lmcli.losses.samplers import check_draws
from lmcli.losses.strategy import OutputMemory, StepSize, Strategy

NEG = -1e9  # logit of a removed accidental hit (finite, so gradients stay clean)


def sampled_logits(weights, bias, hidden, labels, sampled, true_expected, sampled_expected,
                   remove_accidental_hits: bool = True, subtract_log_q: bool = True, *,
                   log_sampled_expected: bool = False) -> tf.Tensor:
    """Logits (M, 1 + S) of real tokens: column 0 the label, then the shared candidates.

    Args:
        weights: W (V, D); bias: b (V,).
        hidden: (M, D) hidden states of real tokens; labels: (M,) int.
        sampled: (S,) int candidate ids shared by all tokens.
        true_expected: (M,) expected count of each label; sampled_expected: (S,).
        remove_accidental_hits: mask candidates equal to the token's own label.
        subtract_log_q: apply the log-Q correction.
        log_sampled_expected: `sampled_expected` is already log Q (S,), e.g. TAPAS's log pi1 + log pi2, whose
            product can underflow in float32.
    """
    labels = tf.cast(labels, tf.int64)
    true_w = tf.gather(weights, labels)  # (M, D)
    true_logit = tf.reduce_sum(hidden * true_w, axis=-1) + tf.gather(bias, labels)  # (M,)
    sampled_w = tf.gather(weights, sampled)  # (S, D)
    logits = tf.matmul(hidden, sampled_w, transpose_b=True) + tf.gather(bias, sampled)  # (M, S)
    if subtract_log_q:
        true_logit -= tf.math.log(true_expected)
        log_q = sampled_expected if log_sampled_expected else tf.math.log(sampled_expected)  # (S,)
        logits -= log_q[None, :]
    if remove_accidental_hits:
        hits = tf.equal(labels[:, None], tf.cast(sampled, tf.int64)[None, :])  # (M, S)
        logits = tf.where(hits, NEG, logits)
    return tf.concat([true_logit[:, None], logits], axis=1)  # (M, 1 + S)


def label_first_losses(logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy (M,) of logits whose column 0 is the label."""
    return tf.reduce_logsumexp(logits, axis=1) - logits[:, 0]  # (M,)


def real_rows(hidden, labels, mask):
    """Indices (M,) of the real tokens, and their hidden states (M, D) and labels (M,)."""
    idx = tf.where(mask > 0)[:, 0]  # (M,)
    return idx, tf.gather(hidden, idx), tf.gather(labels, idx)


def strategy(inputs: LossInputs, config: LossConfig, ctx: StrategyContext) -> StrategyOutput:
    """The `sampled` strategy: per-token sampled-softmax losses (N,), 0 where mask is 0.

    Candidates are drawn once for the batch (`--candidate-sets batch`: logits for the M real tokens only) or once
    per batch row (`row`: every row's tokens against the row's own set). `auto` is made concrete by
    `RunConfig.resolved` (and the memory plan); a LossConfig that never went through it draws one shared set.
    """
    if config.candidate_sets == "row":
        return _per_row(inputs, config, ctx)
    rows, h, y = real_rows(inputs.hidden, inputs.labels, inputs.mask)
    sampled, true_expected, sampled_expected = ctx.sampler.sample(y, tf.ones_like(y, tf.float32), inputs.clock.step)
    logits = sampled_logits(inputs.weights, inputs.bias, h, y, sampled, true_expected, sampled_expected,
                            config.remove_accidental_hits)  # (M, 1 + S)
    losses = scatter_rows(label_first_losses(logits), rows, tf.shape(inputs.labels)[0])  # (N,)
    return StrategyOutput(losses, logits, rows, sampled, label_first=True)


def per_row_logits(weights, bias, hidden, labels, sampled, true_expected, sampled_expected,
                   remove_accidental_hits: bool = True) -> tf.Tensor:
    """Logits (R * G, 1 + S) with one candidate set per row: hidden (R, G, D), labels (R, G), sampled (R, S),
    true_expected (R, G), sampled_expected (R, S); column 0 the label, corrected as in `sampled_logits`. A candidate
    whose expected count is +inf (a row's repeated draw) takes no part: its logit is NEG."""
    labels = tf.cast(labels, tf.int64)
    true_logit = tf.reduce_sum(hidden * tf.gather(weights, labels), -1) + tf.gather(bias, labels)  # (R, G)
    true_logit -= tf.math.log(true_expected)
    sampled_w = tf.gather(weights, sampled)  # (R, S, D)
    logits = tf.matmul(hidden, sampled_w, transpose_b=True) + tf.gather(bias, sampled)[:, None, :]  # (R, G, S)
    logits -= tf.math.log(sampled_expected)[:, None, :]
    logits = tf.where(tf.math.is_inf(sampled_expected)[:, None, :], NEG, logits)  # repeats out (R, G, S)
    if remove_accidental_hits:
        logits = tf.where(tf.equal(labels[:, :, None], sampled[:, None, :]), NEG, logits)  # (R, G, S)
    rows = tf.shape(labels)[0] * tf.shape(labels)[1]
    return tf.concat([tf.reshape(true_logit, [rows, 1]), tf.reshape(logits, [rows, -1])], axis=1)  # (R*G, 1+S)


def _per_row(inputs: LossInputs, config: LossConfig, ctx: StrategyContext) -> StrategyOutput:
    shape = tf.stack([inputs.rows, -1])
    labels, mask = tf.reshape(inputs.labels, shape), tf.reshape(inputs.mask, shape)  # (R, G)
    hidden = tf.reshape(inputs.hidden, tf.concat([shape, tf.shape(inputs.hidden)[-1:]], 0))  # (R, G, D)
    sampled, true_expected, sampled_expected = ctx.sampler.sample_rows(
        labels, mask, inputs.clock.step, inputs.row_offset, inputs.global_rows)  # (R, S), (R, G), (R, S)
    logits = per_row_logits(inputs.weights, inputs.bias, hidden, labels, sampled, true_expected, sampled_expected,
                            config.remove_accidental_hits)  # (N, 1 + S)
    losses = label_first_losses(logits) * inputs.mask  # (N,)
    return StrategyOutput(losses, logits, None, sampled, label_first=True)


def check(config: LossConfig, vocab_size: int) -> None:
    """The label is never one of its own candidates: at most V - 1 of them."""
    check_draws(config, vocab_size, vocab_size - 1, "must be less than")


ROW_DRAWS_BOUND = 2  # per-row draws (repeats included) / num_sampled, planned for; 1.24 to 1.54 on wt2word's unigram


def memory(config: LossConfig, size: StepSize) -> OutputMemory:
    """The (N, 1 + S) logits and their gradient, the S gathered rows of W and their gradient. With a candidate set
    per row, K columns per row (a fixed sampler's K draws, repeats included, planned as ROW_DRAWS_BOUND x S) and K
    rows of W gathered per row; the learned-unigram sampler draws S per row by Gumbel noise over V for every row."""
    n, s, d = size.tokens, config.num_sampled, size.dim
    if config.candidate_sets != "row":
        return OutputMemory(4 * (4 * n * (s + 1) + 2 * s * d), s)
    gumbel = config.sampler == "learned-unigram"
    k = s if gumbel else ROW_DRAWS_BOUND * s
    floats = 4 * n * (k + 1) + 2 * size.rows * k * d + 4 * size.global_rows * k
    if gumbel:
        floats += 3 * size.global_rows * size.vocab_size
    return OutputMemory(4 * floats, k)


# Candidates drawn (--sampler auto: by unigram counts), a step's gradient touches S + N rows of W: lazy Adam.
# Per-row sets where memory affords them: at 550 candidates (4% of V) on wt2word, 4 epochs, 3 seeds, test perplexity
# 1.022 x the full softmax's against 1.097 x with one shared set (README, "Choosing a strategy").
STRATEGY = Strategy(strategy, draws_candidates=True, check=check, optimizer="lazy-adam", sampler="unigram",
                    memory=memory, candidate_sets="row")
