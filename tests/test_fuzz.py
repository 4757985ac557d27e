"""Property tests on arbitrary input: the corpus reader, `lmcli prepare` on random bytes, and option validation.

Each has a closed set of outcomes: lines or InputError; exit 0/3/4/6 with one error line and nothing left
behind; success or ConfigError.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lmcli.cli.main import app
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
from lmcli.data.corpus import read_lines
from lmcli.errors import ConfigError, InputError

RUNNER = CliRunner()
BOM = "\ufeff"

# Pieces that exercise the reader's rules: newlines, NUL, BOM, invalid or cut UTF-8, Unicode whitespace.
PIECES = st.sampled_from([b"\n", b"\r\n", b"\r", b"\0", BOM.encode(), b"\xff", b"\xc3", b"\xc3\xa9", b"\xe2\x80",
                          b" ", b"\t", b"\x0b", b"\x1c", "\u0085".encode(), "\u2028".encode(), b"cat", b"a dog"])
CORPUS_BYTES = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(PIECES, st.binary(max_size=6), st.text(max_size=8).map(str.encode)), max_size=40)
    .map(b"".join),
)


def expected_lines(data: bytes, errors: str) -> list[str] | None:
    """The reader's contract, written out: None where it must raise InputError."""
    if b"\0" in data:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        if errors == "strict":
            return None
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    lines = []
    for i, line in enumerate(raw):
        text = line.decode("utf-8", errors)
        if i == 0 and text.startswith(BOM):
            text = text[1:]
        if text.strip():
            lines.append(text.strip())
    return lines


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=CORPUS_BYTES, errors=st.sampled_from(["strict", "replace"]), gz=st.booleans())
def test_corpus_reader_gives_clean_lines_or_input_error(scratch, data, errors, gz):
    path = scratch / ("in.txt.gz" if gz else "in.txt")
    path.write_bytes(gzip.compress(data) if gz else data)
    want = expected_lines(data, errors)
    try:
        got = list(read_lines(str(path), errors))
    except InputError as e:
        event("InputError")
        assert want is None, (data, str(e))
        assert len(str(e).splitlines()) == 1 and str(path) in str(e)
        return
    assert got == want
    assert all(isinstance(t, str) and t and t == t.strip() and "\n" not in t for t in got)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=120))
def test_corpus_reader_on_arbitrary_bytes_named_gz(scratch, data):
    """Whatever a `.gz` file holds (corrupt, truncated or not gzip at all): lines or InputError."""
    path = scratch / "any.gz"
    path.write_bytes(data)
    try:
        got = list(read_lines(str(path), "replace"))
    except InputError as e:
        assert len(str(e).splitlines()) == 1
    else:
        assert all(isinstance(t, str) and t for t in got)


TEXTISH = st.lists(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24), max_size=30)
WORDS = "the a cat dog sees eats big small red fish bird tree runs very old new".split()
WORDY = st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join), min_size=1, max_size=60)
PREPARE_BYTES = st.one_of(st.binary(max_size=300), CORPUS_BYTES, TEXTISH.map(lambda ls: "\n".join(ls).encode()),
                          WORDY.map(lambda ls: "\n".join(ls).encode()),
                          st.tuples(WORDY.map(lambda ls: "\n".join(ls).encode()), CORPUS_BYTES).map(b"".join))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=PREPARE_BYTES, vocab_size=st.integers(8, 40), model_type=st.sampled_from(MODEL_TYPES),
       errors=st.sampled_from(["strict", "replace"]))
def test_prepare_on_random_bytes_succeeds_or_fails_cleanly(data, vocab_size, model_type, errors):
    with tempfile.TemporaryDirectory() as d:
        corpus, out = Path(d) / "in.txt", Path(d) / "out"
        corpus.write_bytes(data)
        r = RUNNER.invoke(app, ["prepare", str(corpus), "--out", str(out), "--vocab-size", str(vocab_size),
                                "--model-type", model_type, "--encoding-errors", errors, "--quiet"])
        assert r.exit_code in (0, 3, 4, 6), (r.exit_code, r.output, r.exception)
        event(f"exit {r.exit_code}")
        assert "Traceback" not in r.output
        if r.exit_code == 0:
            assert (out / "manifest.json").is_file()
            return
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lmcli: error: "), r.stderr
        assert os.listdir(d) == ["in.txt"]  # no data dir, no temporary dir


# Numbers for option fields: small, huge, and for floats nan/inf.
INTS = st.one_of(st.integers(-3, 40), st.integers(), st.sampled_from([2**31, 2**32, 2**63, 10**30]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2), st.integers(-3, 3),
                   st.sampled_from([0.0, -0.0, 1.0, 1e-9, 1e308]))
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


SECTIONS = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig, "terms": TermsConfig, "train": TrainConfig}
ONE_FIELD = [(name, f.name) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
BASE = RunConfig(model=ModelConfig(vocab_size=5000))  # the defaults, with the vocabulary a data dir gives
ALIASES = {"name": "loss", "shard_tokens": "shard size", "aux_loss": "loss term", "vocab_size": "vocabulary"}


def names(message: str, field: str) -> bool:
    """Whether a one-line error names the option `field` (as --flag, in words, or by its alias)."""
    words = field.replace("_", " ")
    return any(w in message for w in (f"--{field.replace('_', '-')}", words, words.replace(" ", "-"),
                                      ALIASES.get(field, "\0")))


@settings(max_examples=300, deadline=None)
@given(where=st.sampled_from(ONE_FIELD), data=st.data())
def test_one_bad_option_is_refused_with_a_message_that_names_it(where, data):
    """One field of the default run changed to an arbitrary value: either the run is accepted, or the one-line
    ConfigError names that option (or one it conflicts with, named in the same message)."""
    section, field = where
    value = data.draw(values_for(SECTIONS[section]))[field]
    cfg = dataclasses.replace(BASE, **{section: dataclasses.replace(getattr(BASE, section), **{field: value})})
    try:
        cfg.validate()
    except ConfigError as e:
        event(f"ConfigError on {field}")
        assert len(str(e).splitlines()) == 1 and names(str(e), field), (field, value, str(e))
    else:
        event("accepted")
        assert_usable(cfg)


def assert_usable(cfg: RunConfig) -> None:
    """What training does with an accepted config works: it round-trips through config.json, its resolved form
    is accepted, the learning rate is finite and in [0, --lr] along the run, a TAPAS temperature is finite > 0."""
    from lmcli.losses.tapas import resampling_temperature
    from lmcli.schedules import learning_rate

    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    cfg.resolved().validate()
    total = cfg.train.max_steps or 1000
    for step in (0, 1, total // 2, total - 1, total):
        rate = learning_rate(cfg.train, step, step / max(total, 1) * cfg.train.epochs, total, decays=step % 3)
        assert finite(rate) and 0 <= rate <= cfg.train.lr, (step, rate)
        if cfg.loss.name == "tapas":
            temperature = float(resampling_temperature(cfg.loss, step, total))
            assert finite(temperature) and temperature > 0, (step, temperature)


@settings(max_examples=300, deadline=None)
@given(model=values_for(ModelConfig), data=values_for(DataConfig), loss=values_for(LossConfig),
       terms=values_for(TermsConfig), train=values_for(TrainConfig))
def test_run_config_validation_accepts_a_usable_run_or_raises_config_error(model, data, loss, terms, train):
    cfg = RunConfig(model=ModelConfig(**model), data=DataConfig(**data), loss=LossConfig(**loss),
                    terms=TermsConfig(**terms), train=TrainConfig(**train))
    try:
        cfg.validate()
    except ConfigError as e:
        event("ConfigError")
        assert len(str(e).splitlines()) == 1
        return
    assert_usable(cfg)


@settings(max_examples=150, deadline=None)
@example(values={**dataclasses.asdict(GenerateConfig()), "temperature": 1e-310},
         log_probs=[-0.1, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0])  # was NaN: -0.1 / 1e-310 = -inf, twice
@given(values=values_for(GenerateConfig), log_probs=st.lists(st.floats(-30, 0), min_size=8, max_size=8, unique=True))
def test_generate_config_validation_accepts_what_sampling_can_use(values, log_probs):
    """An accepted config samples: the filtered distribution is finite, sums to 1, keeps at most top-k tokens
    (the log-probs drawn here have no ties) and a most likely one; the drawn id is a real token it keeps."""
    from lmcli.generation import choose_tokens, next_token_probs

    cfg = GenerateConfig(**values)
    try:
        cfg.validate()
    except ConfigError as e:
        assert len(str(e).splitlines()) == 1
        return
    lp = np.array([log_probs])  # (1, 8)
    ids = choose_tokens(lp, cfg, [np.random.default_rng(cfg.seed or 0)])
    assert ids.shape == (1,) and 0 <= ids[0] < 8
    if cfg.temperature > 0:
        probs = next_token_probs(lp, cfg.temperature, cfg.top_k, cfg.top_p)[0]
        assert np.all(np.isfinite(probs)) and probs.sum() == pytest.approx(1.0)
        unfiltered = next_token_probs(lp, cfg.temperature, 0, 1.0)[0]  # (a huge temperature rounds to ties)
        assert np.any((probs > 0) & (unfiltered == unfiltered.max()))  # a most likely token is kept
        tied_kth = np.sort(unfiltered)[-min(cfg.top_k, 8)] if cfg.top_k else 0.0  # ties with the k-th stay in
        assert cfg.top_k == 0 or np.count_nonzero(probs) <= np.count_nonzero(unfiltered >= tied_kth)
        assert probs[ids[0]] > 0


@settings(max_examples=150, deadline=None)
@given(values=values_for(PrepareConfig))
def test_prepare_config_validation_accepts_what_prepare_can_use(values):
    """An accepted config splits lines: in 20,000 lines each split gets its share within 0.02, train a real one."""
    from lmcli.data.splits import split_codes

    cfg = PrepareConfig(**values)
    try:
        cfg.validate()
    except ConfigError as e:
        assert len(str(e).splitlines()) == 1
        return
    shares = np.bincount(split_codes(cfg.seed, cfg.valid_fraction, cfg.test_fraction, 0, 20_000), minlength=3) / 20_000
    want = [1 - cfg.valid_fraction - cfg.test_fraction, cfg.valid_fraction, cfg.test_fraction]
    np.testing.assert_allclose(shares, want, atol=0.02)
    assert cfg.vocab_size == "max" or cfg.vocab_size >= 1
