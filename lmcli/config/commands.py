"""Options of the commands that are not a run's config: `prepare`, `eval` and `generate`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lmcli.config.checks import choice, non_negative, positive
from lmcli.runtime.errors import ConfigError

MODEL_TYPES = ("unigram", "bpe", "word", "char")
ENCODING_ERRORS = ("strict", "replace")
VOCAB_MAX = "max"


@dataclass(frozen=True)
class PrepareConfig:
    """Options of `lmcli prepare`."""

    vocab_size: int | str = 8000  # sentencepiece vocabulary, specials included; "max": every piece the corpus allows
    model_type: str = "unigram"  # unigram | bpe | word | char
    character_coverage: float = 0.9995  # fraction of characters kept by the tokenizer
    tokenizer: Optional[str] = None  # reuse this .model instead of training one
    valid_fraction: float = 0.05  # lines sent to valid when no --valid file is given
    test_fraction: float = 0.05  # lines sent to test when no --test file is given
    seed: int = 1234  # line-split and tokenizer-sampling seed
    encoding_errors: str = "strict"  # strict | replace
    max_sentences: int = 2_000_000  # lines sampled to train the tokenizer
    shard_tokens: int = 1 << 27  # tokens per shard file (512 MiB of uint32)

    def validate(self) -> None:
        if self.vocab_size != VOCAB_MAX:
            if isinstance(self.vocab_size, str) or isinstance(self.vocab_size, bool):
                raise ConfigError(f"--vocab-size must be a number or {VOCAB_MAX}, got {self.vocab_size!r}")
            positive("--vocab-size", self.vocab_size)
        choice("model type", self.model_type, MODEL_TYPES)
        if not 0.0 < self.character_coverage <= 1.0:
            raise ConfigError(f"--character-coverage must be in (0, 1], got {self.character_coverage}")
        for name, v in (("--valid-fraction", self.valid_fraction), ("--test-fraction", self.test_fraction)):
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {v}")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ConfigError("--valid-fraction + --test-fraction must be below 1")
        choice("encoding-errors mode", self.encoding_errors, ENCODING_ERRORS)
        positive("shard size", self.shard_tokens)


@dataclass(frozen=True)
class EvalConfig:
    """Options of `lmcli eval` that choose what is scored and how (`lmcli.serve.evaluation.evaluate` checks them)."""

    split: str = "test"  # valid | test | train; ignored with --text
    batch_size: Optional[int] = None  # rows per batch; None = the run's
    encoding_errors: str = "strict"  # --text: invalid UTF-8 stops (strict) or becomes U+FFFD (replace)
    whole_lines: bool = False  # score each line whole, alone, from a fresh state (default: the run's layout)
    token_logprobs: bool = False  # with --per-line: add each line's pieces and log-probs


@dataclass(frozen=True)
class GenerateConfig:
    max_tokens: int = 50  # new tokens per sample at most
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # keep the smallest set whose probability reaches p; 1 = all
    seed: Optional[int] = None  # None = a fresh random seed
    num_samples: int = 1

    def validate(self) -> None:
        if self.max_tokens <= 0:
            raise ConfigError(f"--max-tokens must be positive, got {self.max_tokens}")
        non_negative("--temperature", self.temperature)
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.num_samples <= 0:
            raise ConfigError(f"--num-samples must be positive, got {self.num_samples}")
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
