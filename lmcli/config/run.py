"""RunConfig: everything needed to rebuild a run, saved as RUN_DIR/config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lmcli.config.sections import DataConfig, LossConfig, ModelConfig, TermsConfig, TrainConfig
from lmcli.runtime.errors import ConfigError, RunDirError

SECTIONS = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig, "terms": TermsConfig,
            "train": TrainConfig}


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rebuild a run: saved as RUN_DIR/config.json."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    terms: TermsConfig = field(default_factory=TermsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data_dir: str = ""
    tokenizer_sha256: str = ""
    lmcli_version: str = ""

    @property
    def term_names(self) -> tuple[str, ...]:
        """The loss terms of the run, in the order they are added: the --aux-loss ones, then kl."""
        return self.terms.aux_loss + (("kl",) if self.model.variational_embedding else ())

    def resolved(self) -> "RunConfig":
        """'auto' choices made concrete by the loss strategy (they are saved resolved in config.json); an unknown
        strategy keeps them, for `validate` to name it."""
        from lmcli.losses import STRATEGIES  # the registry imports this module: asked at call time

        strategy = STRATEGIES.get(self.loss.name)
        if strategy is None:
            return self
        optimizer = strategy.optimizer if self.train.optimizer == "auto" else self.train.optimizer
        sampler = strategy.sampler if self.loss.sampler == "auto" else self.loss.sampler
        sets = strategy.candidate_sets if self.loss.candidate_sets == "auto" else self.loss.candidate_sets
        return dataclasses.replace(self, train=dataclasses.replace(self.train, optimizer=optimizer),
                                   loss=dataclasses.replace(self.loss, sampler=sampler, candidate_sets=sets))

    def validate(self) -> None:
        self.model.validate()
        self.data.validate()
        self.loss.validate(self.model.vocab_size)
        self.terms.validate()
        self.train.validate()
        if self.train.lr_schedule == "cosine" and self.train.warmup_steps and self.train.max_steps and \
                self.train.warmup_steps >= self.train.max_steps:
            raise ConfigError(f"--warmup-steps ({self.train.warmup_steps}) must be below --max-steps "
                              f"({self.train.max_steps}) for a cosine schedule")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merged(self, overrides: dict[str, dict[str, Any]]) -> "RunConfig":
        """A copy with `{section: {field: value}}` replaced; None values mean 'not given'."""
        sections = {}
        for name, values in overrides.items():
            given = {k: _as_field(getattr(self, name), k, v) for k, v in values.items() if v is not None}
            if given:
                sections[name] = dataclasses.replace(getattr(self, name), **given)
        return dataclasses.replace(self, **sections)

    def differences(self, other: "RunConfig", sections: tuple[str, ...]) -> list[str]:
        """'section.field: mine != other' for every field that differs in `sections`."""
        out = []
        for name in sections:
            a, b = getattr(self, name), getattr(other, name)
            out += [f"{name}.{f.name}: {getattr(a, f.name)!r} != {getattr(b, f.name)!r}"
                    for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in d:
                value = d[f.name]
                kwargs[f.name] = _build(SECTIONS[f.name], value) if f.name in SECTIONS else value
        return cls(**kwargs)

    def save(self, path: Path) -> None:
        from lmcli.runtime.fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise RunDirError(f"{path} not found: not an lmcli run dir") from None
        except (ValueError, TypeError) as e:
            raise RunDirError(f"{path} is not a valid lmcli config: {e}") from None


def _as_field(section: Any, name: str, value: Any) -> Any:
    """JSON and the command line give lists where a field holds a tuple."""
    return tuple(value) if isinstance(getattr(section, name, None), tuple) else value


def _build(cls: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}")
    defaults = cls()
    return cls(**{k: _as_field(defaults, k, v) for k, v in values.items()})
