"""Option validation by what it is for, on arbitrary values (hypothesis): a refused option gets one line that names
it; an accepted one is usable by the code that reads it. Nothing here restates a check of `validate()`."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from lmcli.config import (
    AUX_DISTANCES,
    AUX_LOSSES,
    CANDIDATE_SETS,
    DISTRIBUTES,
    LOSSES,
    LR_SCHEDULES,
    MODEL_TYPES,
    OPTIMIZERS,
    PAD_SIDES,
    PADDINGS,
    PRECISIONS,
    SAMPLERS,
    TAPAS_CORRECTIONS,
    TEMPERATURE_DECAYS,
    DataConfig,
    GenerateConfig,
    LossConfig,
    ModelConfig,
    PrepareConfig,
    RunConfig,
    TermsConfig,
    TrainConfig,
)
from lmcli.runtime.errors import ConfigError

# Numbers for option fields: small, huge, and for floats nan/inf.
INTS = st.one_of(st.integers(-3, 40), st.integers(), st.sampled_from([2**31, 2**32, 2**63, 10**30]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2), st.integers(-3, 3),
                   st.sampled_from([0.0, -0.0, 1.0, 1e-9, 1e-310, 1e308, math.nan]))
CHOICES = {"padding": PADDINGS, "pad_side": PAD_SIDES, "name": LOSSES, "sampler": SAMPLERS,
           "temperature_decay": TEMPERATURE_DECAYS, "optimizer": OPTIMIZERS, "model_type": MODEL_TYPES,
           "encoding_errors": ("strict", "replace"), "aux_distance": AUX_DISTANCES, "lr_schedule": LR_SCHEDULES,
           "precision": PRECISIONS, "distribute": DISTRIBUTES, "devices": ("", "cpu:0", "gpu:0,gpu:1"),
           "candidate_sets": CANDIDATE_SETS, "tapas_correction": TAPAS_CORRECTIONS}


def values_for(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """Random values for every option field of a config dataclass, by its declared type."""
    by_type = {"int": INTS, "float": FLOATS, "bool": st.booleans(), "Optional[int]": st.none() | INTS,
               "Optional[str]": st.none(), "int | str": st.one_of(INTS, st.sampled_from(["max", "nosuch", ""])),
               "tuple[str, ...]": st.lists(st.sampled_from([*AUX_LOSSES, "kl", "nosuch"]), max_size=3).map(tuple)}
    fields = {}
    for f in dataclasses.fields(cls):
        if f.type == "str":
            fields[f.name] = st.sampled_from([*CHOICES[f.name], "nosuch"])
        else:
            fields[f.name] = by_type[f.type]
    return st.fixed_dictionaries(fields)


def finite(*values: float) -> bool:
    return all(v == v and v not in (math.inf, -math.inf) for v in values)


ALIASES = {"name": "loss", "shard_tokens": "shard size", "aux_loss": "loss term", "vocab_size": "vocabulary"}


def names(message: str, field: str) -> bool:
    """Whether a one-line error names the option `field` (as --flag, in words, or by its alias)."""
    words = field.replace("_", " ")
    return any(w in message for w in (f"--{field.replace('_', '-')}", words, words.replace(" ", "-"),
                                      ALIASES.get(field, "\0")))


def refused_or_usable(cfg: Any, fields: str | tuple[str, ...], usable) -> None:
    """`cfg` with option(s) changed: a one-line ConfigError that names one of them, or `usable(cfg)` holds."""
    fields = (fields,) if isinstance(fields, str) else fields
    try:
        cfg.validate()
    except ConfigError as e:
        event("refused")
        assert len(str(e).splitlines()) == 1 and any(names(str(e), f) for f in fields), (fields, str(e))
    else:
        event("accepted")
        usable(cfg)


# ---- a run's config ----------------------------------------------------------------------------------------------
SECTIONS = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig, "terms": TermsConfig, "train": TrainConfig}
RUN_FIELDS = [(name, f.name) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def run_usable(cfg: RunConfig) -> None:
    """What training does with an accepted run works: it round-trips through config.json, its resolved form is
    accepted, the learning rate is finite and in [0, --lr] along the run, a TAPAS temperature finite and > 0."""
    from lmcli.losses.tapas import resampling_temperature
    from lmcli.train.schedules import learning_rate

    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    cfg.resolved().validate()
    total = cfg.train.max_steps or 1000
    for step in (0, 1, total // 2, total - 1, total):
        rate = learning_rate(cfg.train, step, step / total * cfg.train.epochs, total, decays=step % 3)
        assert finite(rate) and 0 <= rate <= cfg.train.lr, (step, rate)
        if cfg.loss.name == "tapas":
            temperature = float(resampling_temperature(cfg.loss, step, total))
            assert finite(temperature) and temperature > 0, (step, temperature)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("section, field", RUN_FIELDS, ids=[f"{s}.{f}" for s, f in RUN_FIELDS])
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_one_run_option_is_refused_by_name_or_usable(loss, section, field, data):
    """Each option of a valid run (the defaults, V = 5000, each loss) set to arbitrary values, one at a time."""
    base = RunConfig(model=ModelConfig(vocab_size=5000), loss=LossConfig(name=loss))
    value = data.draw(values_for(SECTIONS[section]))[field]
    cfg = dataclasses.replace(base, **{section: dataclasses.replace(getattr(base, section), **{field: value})})
    refused_or_usable(cfg, field, run_usable)


@settings(max_examples=200, deadline=None)
@given(model=values_for(ModelConfig), data=values_for(DataConfig), loss=values_for(LossConfig),
       terms=values_for(TermsConfig), train=values_for(TrainConfig))
def test_any_run_config_is_refused_in_one_line_or_usable(model, data, loss, terms, train):
    cfg = RunConfig(model=ModelConfig(**model), data=DataConfig(**data), loss=LossConfig(**loss),
                    terms=TermsConfig(**terms), train=TrainConfig(**train))
    try:
        cfg.validate()
    except ConfigError as e:
        assert len(str(e).splitlines()) == 1
    else:
        run_usable(cfg)


# ---- generate and prepare ----------------------------------------------------------------------------------------
LOG_PROBS = np.log([[0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.015, 0.005]])  # (1, 8), no ties, none exactly 0


def sampling_usable(cfg: GenerateConfig) -> None:
    """An accepted generate config samples: a finite distribution summing to 1 that keeps a most likely token and
    at most top-k (ties with the k-th aside); the drawn id is a token it keeps."""
    from lmcli.serve.generation import choose_tokens, next_token_probs

    ids = choose_tokens(LOG_PROBS, cfg, [np.random.default_rng(cfg.seed or 0)])
    assert ids.shape == (1,) and 0 <= ids[0] < 8
    if cfg.temperature > 0:
        probs, unfiltered = (next_token_probs(LOG_PROBS, cfg.temperature, k, p)[0]
                             for k, p in ((cfg.top_k, cfg.top_p), (0, 1.0)))
        assert np.all(np.isfinite(probs)) and probs.sum() == pytest.approx(1.0) and probs[ids[0]] > 0
        assert np.any((probs > 0) & (unfiltered == unfiltered.max()))  # (a huge T rounds to ties)
        tied_kth = np.sort(unfiltered)[-min(cfg.top_k, 8)] if cfg.top_k else 0.0
        assert cfg.top_k == 0 or np.count_nonzero(probs) <= np.count_nonzero(unfiltered >= tied_kth)


def splitting_usable(cfg: PrepareConfig) -> None:
    """An accepted prepare config splits 20,000 lines into the asked shares within 0.02, train a real share."""
    from lmcli.data.splits import split_codes

    shares = np.bincount(split_codes(cfg.seed, cfg.valid_fraction, cfg.test_fraction, 0, 20_000), minlength=3)
    want = [1 - cfg.valid_fraction - cfg.test_fraction, cfg.valid_fraction, cfg.test_fraction]
    np.testing.assert_allclose(shares / 20_000, want, atol=0.02)
    assert want[0] > 0


COMMANDS = {"generate": (GenerateConfig, sampling_usable), "prepare": (PrepareConfig, splitting_usable)}
COMMAND_FIELDS = [(c, f.name) for c, (cls, _) in COMMANDS.items() for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("command, field", COMMAND_FIELDS, ids=[f"{c}.{f}" for c, f in COMMAND_FIELDS])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_one_command_option_is_refused_by_name_or_usable(command, field, data):
    cls, usable = COMMANDS[command]
    refused_or_usable(dataclasses.replace(cls(), **{field: data.draw(values_for(cls))[field]}), field, usable)


@settings(max_examples=100, deadline=None)
@example(valid=0.6, test=0.5)
@given(valid=st.floats(0, 1), test=st.floats(0, 1))
def test_split_fractions_together_are_refused_by_name_or_usable(valid, test):
    refused_or_usable(PrepareConfig(valid_fraction=valid, test_fraction=test), ("valid_fraction", "test_fraction"),
                      splitting_usable)


@pytest.mark.parametrize("temperature", [1e-310, 1e-30, 1e300])
def test_extreme_accepted_temperatures_still_sample(temperature):
    """1e-310 once gave NaN: every log-prob / T was -inf (none exactly 0), and -inf - -inf is NaN."""
    sampling_usable(GenerateConfig(temperature=temperature, top_k=3))
