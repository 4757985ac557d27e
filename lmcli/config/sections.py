"""The sections of a run's config: model, data layout, loss strategy, loss terms, optimisation.

Each is a frozen dataclass with a comment on every default, validated once (by `RunConfig.validate`). What depends
on the loss strategy (its options' checks, the optimizer and sampler 'auto' means) is declared by the strategy
in `lmcli.losses` and asked for when a config is validated or resolved: this package never imports `lmcli.losses`
at import time (that package imports this one, and TensorFlow).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmcli.config.checks import choice, non_negative, positive, rate
from lmcli.runtime.errors import ConfigError

# The registry of loss strategies: --loss NAME -> the module whose STRATEGY declares it (lmcli.losses imports them).
# Names only here, so that --help lists them without importing TensorFlow.
STRATEGY_MODULES = {"full": "lmcli.losses.full", "sampled": "lmcli.losses.sampled", "tapas": "lmcli.losses.tapas"}
LOSSES = tuple(STRATEGY_MODULES)
SAMPLERS = ("auto", "unigram", "log-uniform", "uniform", "learned-unigram")
PADDINGS = ("pack", "pad")
PAD_SIDES = ("right", "left")
OPTIMIZERS = ("auto", "adam", "lazy-adam", "sgd", "adagrad")
TEMPERATURE_DECAYS = ("constant", "linear", "exponential", "cosine")
AUX_LOSSES = ("embedding", "ar", "tar")  # terms a user names with --aux-loss (kl comes with --variational-embedding)
AUX_DISTANCES = ("cosine", "mse")
LR_SCHEDULES = ("constant", "step", "exponential", "cosine", "plateau")
PRECISIONS = ("float32", "mixed-float16", "mixed-bfloat16")
DISTRIBUTES = ("auto", "none", "mirrored", "multi-worker")
CANDIDATE_SETS = ("auto", "batch", "row")
TAPAS_CORRECTIONS = ("resample", "none")


@dataclass(frozen=True)
class ModelConfig:
    """The Embedding -> LSTM -> projection -> output(W [V, D], b [V]) network."""

    vocab_size: int = 0  # V, taken from the data dir's tokenizer
    embedding_dim: int = 256  # E
    hidden: int = 512  # LSTM units per layer
    layers: int = 1  # stacked LSTM layers
    proj_dim: int = 0  # D after an optional linear projection; 0 = no projection (D = hidden)
    dropout: float = 0.0  # on embeddings, between layers and before the output layer
    tie_embeddings: bool = False  # W is the embedding matrix (needs D == E)
    embedding_dropout: float = 0.0  # training: drop whole word types per batch, rescale the rest by 1/(1-P)
    variational_embedding: bool = False  # training: a learned Gaussian dropout rate per word (adds the kl term)

    @property
    def output_dim(self) -> int:
        """D, the width of the hidden states that meet W."""
        return self.proj_dim or self.hidden

    def validate(self) -> None:
        positive("vocabulary size", self.vocab_size)
        positive("--embedding-dim", self.embedding_dim)
        positive("--hidden", self.hidden)
        positive("--layers", self.layers)
        if self.proj_dim < 0:
            raise ConfigError(f"--proj-dim must be 0 (none) or positive, got {self.proj_dim}")
        rate("--dropout", self.dropout)
        rate("--embedding-dropout", self.embedding_dropout)
        if self.tie_embeddings and self.output_dim != self.embedding_dim:
            raise ConfigError(
                f"--tie-embeddings needs the output width ({self.output_dim}, from "
                f"{'--proj-dim' if self.proj_dim else '--hidden'}) to equal --embedding-dim "
                f"({self.embedding_dim})"
            )


@dataclass(frozen=True)
class DataConfig:
    """How token shards become batches."""

    padding: str = "pack"  # pack: TBPTT windows with carried state | pad: one line per sequence
    batch_size: int = 32  # B
    seq_len: int = 35  # T, pack mode window
    bucket_by_length: bool = False  # pad mode: batch lines of similar length together
    max_len: int = 256  # pad mode: longer lines are split into pieces of this many tokens
    pad_side: str = "right"  # pad mode: right | left

    def validate(self) -> None:
        choice("padding", self.padding, PADDINGS)
        choice("pad side", self.pad_side, PAD_SIDES)
        positive("--batch-size", self.batch_size)
        positive("--seq-len", self.seq_len)
        positive("--max-len", self.max_len)


@dataclass(frozen=True)
class LossConfig:
    """The training loss strategy. Evaluation always uses the full softmax."""

    name: str = "full"  # full | sampled | tapas
    num_sampled: int = 2048  # candidates per step (sampled, tapas first pass)
    sampler: str = "auto"  # auto (tapas: learned-unigram, else unigram) | unigram | log-uniform | uniform
    unigram_distortion: float = 0.75  # counts ** distortion for the unigram sampler
    remove_accidental_hits: bool = True
    candidate_sets: str = "auto"  # sampled: one set per batch (shared) | per row; auto: row where memory affords it
    num_resampled: int = 1024  # tapas: candidates kept after the resampling pass
    resampling_temperature: float = 1.0  # tapas: T at the start of training
    final_resampling_temperature: float = 0.0  # tapas: T at the end; 0 = keep T constant
    temperature_decay: str = "linear"  # tapas: linear | exponential | cosine | constant
    tapas_correction: str = "resample"  # tapas: resample (an importance-sampled second pass) | none (TF1's top-k)

    def validate(self, vocab_size: int) -> None:
        """The options' choices, then the checks that the strategy declares (`lmcli.losses.strategy`)."""
        from lmcli.losses import get  # the registry imports this module: asked at call time

        strategy = get(self.name)
        choice("sampler", self.sampler, SAMPLERS)
        choice("temperature decay", self.temperature_decay, TEMPERATURE_DECAYS)
        choice("--candidate-sets", self.candidate_sets, CANDIDATE_SETS)
        choice("--tapas-correction", self.tapas_correction, TAPAS_CORRECTIONS)
        strategy.check(self, vocab_size)


@dataclass(frozen=True)
class TermsConfig:
    """Loss terms added to the strategy's loss in training only: loss = strategy + sum_i weight_i * term_i."""

    aux_loss: tuple[str, ...] = ()  # embedding | ar | tar, any number of them
    aux_weight: float = 0.1  # embedding term: its weight
    aux_power: float = 4.0  # embedding term: K, the power that sharpens p each round
    aux_rounds: int = 1  # embedding term: R, rounds of p <- p^K / sum p^K
    aux_distance: str = "cosine"  # embedding term: cosine | mse, to the target word's embedding
    ar_alpha: float = 2.0  # ar term: weight of mean(h^2) of the last layer's (dropped) output (AWD-LSTM: 2)
    tar_beta: float = 1.0  # tar term: weight of mean((h_t - h_t-1)^2) of its raw output (AWD-LSTM: 1)
    kl_weight: float = 1.0  # kl term (--variational-embedding): final weight of KL / training tokens
    kl_warmup_epochs: float = 1.0  # kl term: epochs of the linear ramp of its weight from 0; 0 = none

    def validate(self) -> None:
        for name in self.aux_loss:
            if name == "kl":
                raise ConfigError("the kl term comes with --variational-embedding; do not name it in --aux-loss")
            choice("--aux-loss", name, AUX_LOSSES)
        if len(set(self.aux_loss)) != len(self.aux_loss):
            raise ConfigError(f"--aux-loss names a term twice ({', '.join(self.aux_loss)})")
        non_negative("--aux-weight", self.aux_weight)
        positive("--aux-power", self.aux_power)
        positive("--aux-rounds", self.aux_rounds)
        choice("--aux-distance", self.aux_distance, AUX_DISTANCES)
        non_negative("--ar-alpha", self.ar_alpha)
        non_negative("--tar-beta", self.tar_beta)
        non_negative("--kl-weight", self.kl_weight)
        non_negative("--kl-warmup-epochs", self.kl_warmup_epochs)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping."""

    optimizer: str = "auto"  # auto (lazy-adam for sampled/tapas, adam for full) | adam | lazy-adam | sgd | adagrad
    lr: float = 1e-3  # the base learning rate (the schedule's start)
    lr_schedule: str = "constant"  # constant | step | exponential | cosine | plateau
    warmup_steps: int = 0  # linear ramp of the rate from 0 over these first steps
    lr_decay: float = 4.0  # step/exponential: divide by this every --lr-decay-every epochs; plateau: per miss
    lr_decay_every: int = 1  # step/exponential: epochs per division by --lr-decay
    min_lr: float = 0.0  # the rate never goes below this (after warmup)
    clip_norm: float = 1.0  # global gradient-norm clip; 0 = off
    precision: str = "float32"  # float32 | mixed-float16 (with dynamic loss scaling) | mixed-bfloat16
    distribute: str = "auto"  # auto (multi-worker with TF_CONFIG, mirrored with > 1 GPU, else none) | none | ...
    devices: str = ""  # mirrored: comma list (gpu:0,gpu:1; cpu:0,cpu:1 splits the CPU); "" = every GPU
    worker_timeout: float = 300.0  # seconds a collective waits for the other workers before the run fails
    epochs: int = 1
    max_steps: int = 0  # stop after this many steps in all; 0 = no limit
    seed: int = 1234
    checkpoint_every: int = 500  # steps between checkpoints (also one at each epoch end)
    keep: int = 3  # latest checkpoints kept (the best one is kept apart)
    log_every: int = 50  # steps between metrics.jsonl / progress lines

    def validate(self) -> None:
        choice("optimizer", self.optimizer, OPTIMIZERS)
        positive("--lr", self.lr)
        choice("--lr-schedule", self.lr_schedule, LR_SCHEDULES)
        non_negative("--warmup-steps", self.warmup_steps)
        if not (self.lr_decay >= 1.0 and self.lr_decay < float("inf")):
            raise ConfigError(f"--lr-decay must be >= 1 (the rate is divided by it), got {self.lr_decay}")
        positive("--lr-decay-every", self.lr_decay_every)
        non_negative("--min-lr", self.min_lr)
        if self.min_lr > self.lr:
            raise ConfigError(f"--min-lr ({self.min_lr}) must not exceed --lr ({self.lr})")
        non_negative("--clip-norm", self.clip_norm)
        choice("--precision", self.precision, PRECISIONS)
        choice("--distribute", self.distribute, DISTRIBUTES)
        positive("--worker-timeout", self.worker_timeout)
        positive("--epochs", self.epochs)
        if self.max_steps < 0:
            raise ConfigError(f"--max-steps must be >= 0, got {self.max_steps}")
        positive("--checkpoint-every", self.checkpoint_every)
        positive("--keep", self.keep)
        positive("--log-every", self.log_every)
        if not 0 <= self.seed < 2**32:  # what keras.utils.set_random_seed accepts
            raise ConfigError(f"--seed must be in [0, 2**32), got {self.seed}")
