"""TAPAS (two-pass approximate adaptive sampling) softmax: a TF2 port of TF1's contrib rank sampler.

`rank_sampled_softmax_loss` keeps the signature and behaviour of TF1's
`tf.contrib.nn.rank_sampled_softmax_loss` (arXiv:1707.03073), so old code ports by changing the import:

1. Sample `num_sampled` candidates (given `sampled_values`, else the learned unigram sampler).
2. Score each candidate i by logsumexp_j((w_i . x_j + b_i) / T) over the batch rows j, keep the
   `num_resampled` best (top-k). The kept candidates carry their first-pass expected counts unchanged;
   the true expected counts pass through as they are.
3. Return `tf.nn.sampled_softmax_loss` over the kept candidates: per-example losses [batch_size].

Weights and biases may be sharded ("div" or "mod", see `lmcli.losses.sharding`). The optional keyword
`mask` is the one addition: masked rows take no part in sampling or scoring and get loss 0.
`strategy` is the lmcli strategy built on the same two passes, with a temperature schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import tensorflow as tf

from lmcli.config import LossConfig
from lmcli.config.checks import non_negative, positive
from lmcli.losses import sharding
from lmcli.losses.context import LossInputs, StrategyContext, StrategyOutput, scatter_rows
from lmcli.losses.resample import resample
from lmcli.losses.sampled import label_first_losses, real_rows, sampled_logits
from lmcli.losses.samplers import check_draws
from lmcli.losses.strategy import OutputMemory, StepSize, Strategy
from lmcli.runtime.errors import ConfigError
from lmcli.train import replicas

SampledValues = Sequence[Any]  # (sampled (S,), true_expected (B, num_true), sampled_expected (S,))
TEMPERATURE_RANGE = (1e-6, 1e6)  # T: 1/T scales float32 scores, and the schedule divides one T by another
LOW_TEMPERATURE = 0.3  # below this, a NaN loss names the resampling temperature first


def _validate(num_sampled: int, num_resampled: int, num_classes: int, partition_strategy: Any) -> None:
    """The checks of the TF1 original, in its order, with its messages."""
    if num_sampled > num_classes:
        raise ValueError(f"num_sampled ({num_sampled}) cannot be greater than num_classes ({num_classes})")
    if num_sampled <= num_resampled:
        raise ValueError(f"num_resampled ({num_resampled}) must be less than num_sampled ({num_sampled})")
    if partition_strategy not in sharding.PARTITION_STRATEGIES:
        raise ValueError(f"unsupported partition_strategy ({partition_strategy})")


def _real_rows(mask: Any) -> tf.Tensor:
    """Indices of the rows where `mask` is true / positive, (R,) int64."""
    return tf.where(tf.cast(mask, tf.float32) > 0)[:, 0]  # (R,)


def resampling_scores(weights: Any, biases: Any, inputs: tf.Tensor, sampled: tf.Tensor,
                      resampling_temperature: Any, partition_strategy: str = "div") -> tf.Tensor:
    """logsumexp_j((w_i . x_j + b_i) / T) for each sampled class i, computed as TF1 did.

    Args:
        weights: class embeddings (V, D), or their shards.
        biases: class biases (V,), or their shards.
        inputs: the rows x_j that vote, (B, D).
        sampled: candidate ids, (S,) int.
        resampling_temperature: T, a scalar.
        partition_strategy: "div" or "mod", for sharded weights/biases.

    Returns:
        Scores, (S,): -inf for every candidate when `inputs` has no rows.
    """
    temperature = tf.cast(resampling_temperature, inputs.dtype)
    scaled = inputs / temperature  # (B, D)
    w = sharding.gather_rows(weights, sampled, partition_strategy)  # (S, D)
    scores = tf.reduce_logsumexp(tf.matmul(w, scaled, transpose_b=True), axis=1)  # (S,)
    b = tf.reshape(sharding.gather_rows(biases, sampled, partition_strategy), [-1])  # (S,)
    return tf.stop_gradient(scores + b / temperature)  # (S,): it only selects, as in TF1


def rank_resample(weights: Any, biases: Any, inputs: tf.Tensor, sampled_values: SampledValues,
                  num_resampled: int, resampling_temperature: Any, partition_strategy: str = "div", *,
                  mask: Optional[Any] = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The second TAPAS pass: keep the `num_resampled` best-scored candidates (TF1's `_rank_resample`).

    Args:
        weights: class embeddings (V, D), or their shards.
        biases: class biases (V,), or their shards.
        inputs: (B, D).
        sampled_values: (sampled (S,), true_expected (B, num_true), sampled_expected (S,)).
        num_resampled: K < S candidates kept.
        resampling_temperature: T, a scalar; low T favours classes that fit some row very well, high T
            classes that fit the rows well on average.
        partition_strategy: "div" or "mod", for sharded weights/biases.
        mask: optional (B,); rows where it is 0/False do not vote.

    Returns:
        (kept ids (K,) int64 in no particular order, true_expected unchanged,
        kept candidates' first-pass expected counts (K,)).
    """
    sampled, true_expected, sampled_expected = (tf.stop_gradient(v) for v in sampled_values)
    sampled = tf.cast(sampled, tf.int64)  # (S,)
    if mask is not None:
        inputs = tf.gather(inputs, _real_rows(mask))  # (R, D)
    scores = resampling_scores(weights, biases, inputs, sampled, resampling_temperature,
                               partition_strategy)  # (S,)
    _, kept = tf.math.top_k(scores, k=num_resampled, sorted=False)  # (K,)
    return tf.gather(sampled, kept), true_expected, tf.gather(sampled_expected, kept)


def _sampled_softmax(weights: Any, biases: Any, labels: tf.Tensor, inputs: tf.Tensor, num_sampled: int,
                     num_classes: int, num_true: int, sampled_values: SampledValues,
                     remove_accidental_hits: bool, partition_strategy: str) -> tf.Tensor:
    """`tf.nn.sampled_softmax_loss` for whole or sharded weights/biases, (B,).

    Sharded parameters are first gathered at the unique ids of labels and candidates into a compact
    (U, D) matrix; labels and candidates are renumbered into it (equal ids stay equal, so accidental
    hits are found as before), which gives exactly the loss over the full matrix.
    """
    w_shards, b_shards = sharding.as_shards(weights), sharding.as_shards(biases)
    sampled, true_expected, sampled_expected = sampled_values
    if len(w_shards) == 1 and len(b_shards) == 1:
        return tf.nn.sampled_softmax_loss(
            w_shards[0], b_shards[0], labels, inputs, num_sampled, num_classes, num_true=num_true,
            sampled_values=sampled_values, remove_accidental_hits=remove_accidental_hits)  # (B,)
    labels_flat = tf.reshape(labels, [-1])  # (B * num_true,)
    ids, local = tf.unique(tf.concat([labels_flat, sampled], 0), out_idx=tf.int64)  # (U,), (B*num_true + K,)
    num_labels = tf.size(labels_flat)
    local_labels = tf.reshape(local[:num_labels], tf.shape(labels))  # (B, num_true)
    w = sharding.gather_rows(w_shards, ids, partition_strategy)  # (U, D)
    b = tf.reshape(sharding.gather_rows(b_shards, ids, partition_strategy), [-1])  # (U,)
    return tf.nn.sampled_softmax_loss(
        w, b, local_labels, inputs, num_sampled, num_classes, num_true=num_true,
        sampled_values=(local[num_labels:], true_expected, sampled_expected),
        remove_accidental_hits=remove_accidental_hits)  # (B,)


def _rank_sampled_rows(weights: Any, biases: Any, labels: tf.Tensor, inputs: tf.Tensor, num_sampled: int,
                       num_resampled: int, num_classes: int, num_true: int,
                       sampled_values: Optional[SampledValues], resampling_temperature: Any,
                       remove_accidental_hits: bool, partition_strategy: str) -> tf.Tensor:
    """The TF1 computation on every given row, (B,)."""
    if not sampled_values:
        sampled_values = tf.random.learned_unigram_candidate_sampler(
            true_classes=labels, num_true=num_true, num_sampled=num_sampled, unique=True,
            range_max=num_classes)
    resampled_values = rank_resample(weights, biases, inputs, sampled_values, num_resampled,
                                     resampling_temperature, partition_strategy)
    return _sampled_softmax(weights, biases, labels, inputs, num_resampled, num_classes, num_true,
                            resampled_values, remove_accidental_hits, partition_strategy)  # (B,)


def rank_sampled_softmax_loss(weights: Any, biases: Any, labels: Any, inputs: Any, num_sampled: int,
                              num_resampled: int, num_classes: int, num_true: int,
                              sampled_values: Optional[SampledValues], resampling_temperature: Any,
                              remove_accidental_hits: bool, partition_strategy: str,
                              name: Optional[str] = None, *, mask: Optional[Any] = None) -> tf.Tensor:
    """Softmax loss over rank-resampled candidates: TF1's `tf.contrib.nn.rank_sampled_softmax_loss`.

    Args:
        weights: (num_classes, dim) tensor/variable, or a list of shards partitioned by
            `partition_strategy`.
        biases: (num_classes,) tensor/variable, or a list of shards partitioned the same way.
        labels: (batch_size, num_true) int target classes.
        inputs: (batch_size, dim) activations.
        num_sampled: candidates of the first pass.
        num_resampled: candidates kept by the second pass; must be less than `num_sampled`.
        num_classes: V.
        num_true: targets per example.
        sampled_values: (sampled (S,), true_expected (batch_size, num_true), sampled_expected (S,)) from a
            candidate sampler; if empty/None, `tf.random.learned_unigram_candidate_sampler` (unique) draws
            `num_sampled` candidates.
        resampling_temperature: T, a scalar (float or tensor).
        remove_accidental_hits: whether a candidate equal to a target is masked out of that row.
        partition_strategy: "div" or "mod" (checked even for unsharded weights, as in TF1).
        name: name scope (optional).
        mask: keyword-only, optional (batch_size,) float/bool: rows where it is 0/False take no part in
            sampling or scoring, and get loss 0.

    Returns:
        Per-example losses, (batch_size,).

    Raises:
        ValueError: if num_sampled > num_classes, num_resampled >= num_sampled, or partition_strategy is
            not "div" or "mod".
    """
    _validate(num_sampled, num_resampled, num_classes, partition_strategy)
    with tf.name_scope(name or "rank_sampled_softmax_loss"):
        labels = tf.cast(labels, tf.int64)  # (B, num_true)
        inputs = tf.convert_to_tensor(inputs)  # (B, D)
        args = (num_sampled, num_resampled, num_classes, num_true)
        tail = (resampling_temperature, remove_accidental_hits, partition_strategy)
        if mask is None:
            return _rank_sampled_rows(weights, biases, labels, inputs, *args, sampled_values, *tail)
        rows = _real_rows(mask)  # (R,)
        if sampled_values:
            sampled, true_expected, sampled_expected = sampled_values
            sampled_values = (sampled, tf.gather(true_expected, rows), sampled_expected)
        losses = _rank_sampled_rows(weights, biases, tf.gather(labels, rows), tf.gather(inputs, rows),
                                    *args, sampled_values, *tail)  # (R,)
        batch = tf.shape(inputs, out_type=tf.int64)[:1]
        return tf.scatter_nd(rows[:, None], losses, batch)  # (B,): exactly 0 on masked rows


def resampling_temperature(config: LossConfig, step: Any, total_steps: int) -> tf.Tensor:
    """The resampling temperature at `step`, a float32 scalar.

    Constant (`config.resampling_temperature`) when `final_resampling_temperature` is 0, the decay is
    "constant" or `total_steps` is 0; otherwise it moves from the start to the final value over
    `total_steps` (and stays there): "linear", "exponential" (geometric interpolation) or "cosine".
    """
    start = tf.constant(config.resampling_temperature, tf.float32)
    final = config.final_resampling_temperature
    decay = config.temperature_decay
    if final == 0 or decay == "constant" or total_steps <= 0:
        return start
    end = tf.constant(final, tf.float32)
    frac = tf.clip_by_value(tf.cast(step, tf.float32) / float(total_steps), 0.0, 1.0)  # ()
    if decay == "linear":
        return start + (end - start) * frac
    if decay == "exponential":
        return start * tf.pow(end / start, frac)
    if decay == "cosine":
        return end + (start - end) * 0.5 * (1.0 + tf.cos(math.pi * frac))
    raise ValueError(f"unknown temperature decay '{decay}'")


def strategy(inputs: LossInputs, config: LossConfig, ctx: StrategyContext) -> StrategyOutput:
    """Per-token TAPAS losses (N,); 0 where mask is 0, and padded rows take no part in the resampling.

    The first pass draws `num_sampled` candidates with `ctx.sampler`; the second keeps `num_resampled` of them by
    their scores at the scheduled temperature (under tf.distribute the scores are taken over the global batch's
    rows): `--tapas-correction none` keeps the best ones with their first-pass expected counts (TF1's
    `rank_resample`), `resample` draws them and corrects each by its probability of being kept
    (`lmcli.losses.resample`). The loss is the sampled softmax over the kept candidates. Logits: (M, 1 + K), the
    label first, for the M real tokens.
    """
    if ctx.sampler is None:
        raise ValueError("the tapas loss needs a candidate sampler (StrategyContext.sampler)")
    rows, h, y = real_rows(inputs.hidden, tf.cast(inputs.labels, tf.int64), inputs.mask)  # (M,), (M, D), (M,)
    step = inputs.clock.step
    first = ctx.sampler.sample(y, tf.ones_like(y, tf.float32), step)
    temperature = resampling_temperature(config, step, inputs.clock.total_steps)
    sampled, true_expected, sampled_expected = (tf.stop_gradient(v) for v in first)
    scores = resampling_scores(inputs.weights, inputs.bias, h, sampled, temperature)  # (S,): this replica's rows
    scores = replicas.logsumexp(scores)  # every row of the global batch votes
    if config.tapas_correction == "resample":  # log counts: pi1 * pi2 can underflow at a low temperature
        kept, log_kept = resample(scores, sampled, sampled_expected, config.num_resampled, ctx.seed, step)
    else:  # TF1: the best scores, with their first-pass expected counts
        _, keep = tf.math.top_k(scores, k=config.num_resampled, sorted=False)  # (K,)
        kept, log_kept = tf.gather(sampled, keep), tf.math.log(tf.gather(sampled_expected, keep))  # (K,), (K,)
    logits = sampled_logits(inputs.weights, inputs.bias, h, y, kept, true_expected, log_kept,
                            config.remove_accidental_hits, log_sampled_expected=True)  # (M, 1 + K)
    losses = scatter_rows(label_first_losses(logits), rows, tf.shape(inputs.labels)[0])  # (N,)
    return StrategyOutput(losses, logits, rows, kept, label_first=True)


def check(config: LossConfig, vocab_size: int) -> None:
    """Candidates drawn from all V classes; one set over the batch; R < S kept at a temperature float32 can use."""
    check_draws(config, vocab_size, vocab_size, "must not exceed")
    if config.candidate_sets == "row":
        raise ConfigError("--candidate-sets row is for --loss sampled (TAPAS scores one set over the batch)")
    positive("--num-resampled", config.num_resampled)
    positive("--resampling-temperature", config.resampling_temperature)
    non_negative("--final-resampling-temperature", config.final_resampling_temperature)
    for flag, t in (("--resampling-temperature", config.resampling_temperature),
                    ("--final-resampling-temperature", config.final_resampling_temperature)):
        if t and not TEMPERATURE_RANGE[0] <= t <= TEMPERATURE_RANGE[1]:
            raise ConfigError(f"{flag} must be in [{TEMPERATURE_RANGE[0]:g}, {TEMPERATURE_RANGE[1]:g}], got {t}")
    if config.num_resampled >= config.num_sampled:
        raise ConfigError(f"--num-resampled ({config.num_resampled}) must be less than --num-sampled "
                          f"({config.num_sampled})")


def memory(config: LossConfig, size: StepSize) -> OutputMemory:
    """The (N, 1 + R) logits and their gradient, the S gathered rows of W and their gradient, and the first pass's
    (N, S) scores."""
    n, s = size.tokens, config.num_sampled
    return OutputMemory(4 * (4 * n * (config.num_resampled + 1) + 2 * s * size.dim + n * s), s)


def nan_cause(config: LossConfig, step: int, total_steps: int) -> Optional[str]:
    """A low resampling temperature, when it was below `LOW_TEMPERATURE` at (1-based) `step`: the second pass's
    scores are scaled by 1/T, so at T = 0.02 they are 50 times as far apart as at T = 1, and the corrections (log
    of inclusion probabilities) grow with them."""
    temperature = float(resampling_temperature(config, max(step - 1, 0), total_steps))
    if temperature >= LOW_TEMPERATURE:
        return None
    return (f"the TAPAS resampling temperature was {temperature:.3g} at that step (below {LOW_TEMPERATURE}, "
            "the second pass's scores, scaled by 1/T, spread far apart): try a higher --resampling-temperature"
            + (" or --final-resampling-temperature" if config.final_resampling_temperature else ""))


# Candidates drawn (--sampler auto: the learned unigram, which follows the labels seen), sparse rows of W: lazy Adam.
STRATEGY = Strategy(strategy, draws_candidates=True, check=check, optimizer="lazy-adam", sampler="learned-unigram",
                    memory=memory, nan_cause=nan_cause)


__all__ = ["rank_resample", "rank_sampled_softmax_loss", "resampling_scores", "resampling_temperature",
           "strategy"]
