"""lmcli.data.shards: TokenArray indexing across shards, SplitData views, data dir verification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcli.config import PrepareConfig
from lmcli.data.prepare import prepare
from lmcli.data.shards import TokenArray, encode_lines, open_data_dir
from lmcli.runtime.errors import RunDirError
from lmcli.runtime.progress import Progress

CFG = PrepareConfig(vocab_size=60, model_type="word", valid_fraction=0.1, test_fraction=0.1, seed=3,
                    shard_tokens=400)


@pytest.fixture
def data_dir(tmp_path, text_lines, write_lines) -> Path:
    out = tmp_path / "data"
    prepare([str(write_lines("corpus.txt", text_lines))], out, CFG, Progress())
    return out


def concatenated(path: Path, split: str) -> np.ndarray:
    """All shard files of a split read with plain numpy, in shard order."""
    files = sorted(path.glob(f"{split}.*.ids"))
    return np.concatenate([np.fromfile(f, dtype="<u4") for f in files]).astype(np.int64)


def test_take_and_slice_across_shards_match_numpy(data_dir):
    data = open_data_dir(data_dir)
    split = data.split("train")
    ref = concatenated(data_dir, "train")  # int64 [tokens]
    assert len(data.manifest["splits"]["train"]["shards"]) >= 5
    assert len(split.ids) == len(ref) == split.tokens
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ref), size=(7, 33))  # int64 (7, 33)
    got = split.ids.take(idx)
    assert got.dtype == np.int32 and got.shape == (7, 33)
    np.testing.assert_array_equal(got, ref[idx])
    starts = np.cumsum([s["tokens"] for s in data.manifest["splits"]["train"]["shards"]])
    n = len(ref)
    for a, b in [(0, n), (starts[0] - 3, starts[2] + 5), (starts[1], starts[1]), (n - 2, n + 9), (5, 2)]:
        got = split.ids.slice(int(a), int(b))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, ref[a:b])
    with pytest.raises(IndexError):
        split.ids.take(np.array([len(ref)]))
    with pytest.raises(IndexError):
        split.ids.take(np.array([-1]))


def test_shards_roll_over_at_line_boundaries(data_dir):
    data = open_data_dir(data_dir)
    split = data.split("train")
    offsets = np.asarray(split.offsets)
    assert offsets[0] == 0 and offsets[-1] == split.tokens and len(offsets) == split.lines + 1
    boundary = 0
    for shard in data.manifest["splits"]["train"]["shards"]:
        size = (data_dir / shard["file"]).stat().st_size // 4
        assert size == shard["tokens"] <= CFG.shard_tokens
        boundary += size
        assert boundary in offsets  # a shard never ends inside a line
    lengths = split.lengths()
    assert lengths.dtype == np.int64 and lengths.sum() == split.tokens
    eos = data.eos_id
    ref = concatenated(data_dir, "train")
    assert (ref == eos).sum() == split.lines and ref[-1] == eos
    for i in (0, 1, split.lines - 1):
        np.testing.assert_array_equal(split.line(i), ref[offsets[i]:offsets[i + 1]])
        assert len(split.line(i)) == lengths[i]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=6), data=st.data())
def test_token_array_matches_concatenation(sizes, data):
    rng = np.random.default_rng(sum(sizes))
    parts = [rng.integers(0, 1000, size=n).astype("<u4") for n in sizes]
    ref = np.concatenate(parts).astype(np.int64)
    arr = TokenArray(parts)
    assert len(arr) == len(ref)
    if len(ref):
        idx = np.asarray(data.draw(st.lists(st.integers(0, len(ref) - 1), max_size=20)), dtype=np.int64)
        np.testing.assert_array_equal(arr.take(idx), ref[idx])
    a = data.draw(st.integers(0, len(ref) + 2))
    b = data.draw(st.integers(0, len(ref) + 2))
    np.testing.assert_array_equal(arr.slice(a, b), ref[a:b])


def test_encode_lines_equals_a_prepared_split(tmp_path, text_lines, write_lines):
    valid = text_lines[300:]
    prepare([str(write_lines("train.txt", text_lines[:300]))], tmp_path / "data", CFG, Progress(),
            valid_files=[str(write_lines("valid.txt", valid))])
    data = open_data_dir(tmp_path / "data")
    stored = data.split("valid")
    mem = encode_lines(["", *(f" {line} " for line in valid), "  "], data.tokenizer(), name="valid.txt")
    assert (mem.lines, mem.tokens, mem.bytes) == (stored.lines, stored.tokens, stored.bytes)
    np.testing.assert_array_equal(mem.offsets, stored.offsets)
    np.testing.assert_array_equal(mem.ids.slice(0, len(mem.ids)), stored.ids.slice(0, len(stored.ids)))
    assert mem.line(4).dtype == np.int32


def test_open_data_dir_rejects_damage(data_dir, tmp_path):
    first = data_dir / "train.00001.ids"
    manifest = json.loads((data_dir / "manifest.json").read_text())

    def broken(match: str) -> None:
        with pytest.raises(RunDirError, match=match):
            open_data_dir(data_dir)

    good = first.read_bytes()
    first.write_bytes(good[:-4])
    broken(r"train\.00001\.ids \(train split\) has \d+ bytes, the manifest says")
    first.unlink()
    broken(r"train\.00001\.ids \(train split\) is missing")
    first.write_bytes(good)
    open_data_dir(data_dir)

    offsets = data_dir / "valid.offsets"
    good = offsets.read_bytes()
    offsets.write_bytes(good[:-8] + np.array([10**6], dtype="<i8").tobytes())
    with pytest.raises(RunDirError, match=r"valid\.offsets is corrupt"):
        open_data_dir(data_dir).split("valid")
    offsets.write_bytes(good)

    tok = data_dir / "tokenizer.model"
    model = tok.read_bytes()
    tok.write_bytes(model + b"\0")
    broken("tokenizer.model does not match the manifest")
    tok.write_bytes(model)

    (data_dir / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    broken("unsupported data format_version 99")
    (data_dir / "manifest.json").write_text("{")
    broken("cannot be read")
    (data_dir / "manifest.json").unlink()
    broken("no manifest.json")
    with pytest.raises(RunDirError, match="does not exist"):
        open_data_dir(tmp_path / "nowhere")
    with pytest.raises(RunDirError, match="not a directory"):
        open_data_dir(tmp_path / "corpus.txt")


def test_data_dir_fields(data_dir):
    data = open_data_dir(data_dir)
    tok = data.tokenizer()
    assert (data.pad_id, data.unk_id, data.bos_id, data.eos_id) == (0, 1, 2, 3)
    assert data.vocab_size == tok.vocab_size == 60 and data.tokenizer_sha256 == tok.sha256
    assert tok.path == data.tokenizer_path and tok.serialized == data.tokenizer_path.read_bytes()
    assert all(data.has_split(s) for s in ("train", "valid", "test")) and not data.has_split("other")
    assert data.unigram_counts.dtype == np.int64
    assert data.unigram_counts[data.eos_id] == data.split("train").lines
