"""Property tests on arbitrary input: the corpus reader and `lmcli prepare` on random bytes (option values:
tests/test_config_properties.py).

Each has a closed set of outcomes: lines or InputError; exit 0/3/4/6 with one error line and nothing left
behind.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lmcli.cli.main import app
from lmcli.config import MODEL_TYPES
from lmcli.data.corpus import read_lines
from lmcli.runtime.errors import InputError

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
