"""Reading a data dir written by `lmcli prepare`: token shards as memmaps, line offsets, the tokenizer.

Token ids are read-only little-endian uint32 memmaps and are returned as int32 (ids are < V < 2**31).
Line i of a split is `ids[offsets[i]:offsets[i + 1]]`: its piece ids followed by the eos id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmcli.data.corpus import clean_text
from lmcli.data.layout import FORMAT_VERSION, IDS_DTYPE, MANIFEST, OFFSETS_DTYPE
from lmcli.data.tokenizer import Tokenizer
from lmcli.runtime.errors import RunDirError
from lmcli.runtime.fileio import sha256_file

_ENCODE_BATCH = 1024


class TokenArray:
    """The concatenation of one or more 1-D uint32 arrays (shard memmaps), indexed globally."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self._parts = [p for p in parts if len(p)]
        sizes = [len(p) for p in self._parts]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)  # [P + 1]

    @classmethod
    def open(cls, paths: Sequence[Path]) -> TokenArray:
        """Memory-map shard files (mode 'r', dtype '<u4')."""
        return cls([np.memmap(p, dtype=IDS_DTYPE, mode="r") for p in paths])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Ids at global positions `idx` (int, any shape) as an int32 array of the same shape.

        Raises:
            IndexError: a position outside [0, len).
        """
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"token index out of range [0, {len(self)})")
        if len(self._parts) == 1:
            return np.array(self._parts[0][idx], dtype=np.int32)
        out = np.empty(idx.shape, dtype=np.int32)
        part = np.searchsorted(self._starts, idx, side="right") - 1  # int64, same shape as idx
        for k in np.unique(part):
            sel = part == k
            out[sel] = self._parts[k][idx[sel] - self._starts[k]]
        return out

    def slice(self, start: int, stop: int) -> np.ndarray:
        """An int32 copy of positions [start, stop); `stop` is clipped to len like Python slicing.

        Raises:
            IndexError: a negative `start`.
        """
        if start < 0:
            raise IndexError(f"negative start {start}")
        stop = min(int(stop), len(self))
        out = np.empty(max(stop - start, 0), dtype=np.int32)  # int32 [stop - start]
        pos = start
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        while pos < stop:
            base = int(self._starts[k])
            end = min(stop, int(self._starts[k + 1]))
            out[pos - start:end - start] = self._parts[k][pos - base:end - base]
            pos, k = end, k + 1
        return out


@dataclass(frozen=True, eq=False)
class SplitData:
    """One split: its token ids and line offsets, and its counts from the manifest."""

    name: str
    lines: int
    tokens: int  # eos included
    bytes: int  # sum of UTF-8 line lengths + 1 per line (the newline that eos stands for)
    ids: TokenArray
    offsets: np.ndarray  # int64 [lines + 1], global positions of line starts in `ids`

    def line(self, i: int) -> np.ndarray:
        """int32 ids of line i, eos included."""
        if not 0 <= i < self.lines:
            raise IndexError(f"line {i} out of range [0, {self.lines})")
        return self.ids.slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def lengths(self) -> np.ndarray:
        """int64 [lines]: tokens per line, eos included."""
        return np.diff(np.asarray(self.offsets, dtype=np.int64))


@dataclass(frozen=True, eq=False)
class DataDir:
    """An opened, verified data dir."""

    path: Path
    manifest: dict
    tokenizer_path: Path
    tokenizer_sha256: str
    vocab_size: int
    pad_id: int
    unk_id: int
    bos_id: int
    eos_id: int
    unigram_counts: np.ndarray  # int64 [V], train split, eos included

    def has_split(self, name: str) -> bool:
        """True if the split exists and has at least one line."""
        return int(self.manifest["splits"].get(name, {}).get("lines", 0)) > 0

    def split(self, name: str) -> SplitData:
        """Open a split (memmaps; nothing is read yet).

        Raises:
            RunDirError: the split is absent or empty.
        """
        if not self.has_split(name):
            raise RunDirError(f"{self.path} has no {name} split (0 lines); give the {name} text to "
                              "lmcli prepare (e.g. --valid FILE or --valid-fraction)")
        entry = self.manifest["splits"][name]
        ids = TokenArray.open([self.path / s["file"] for s in entry["shards"]])
        offsets = np.memmap(self.path / entry["offsets"], dtype=OFFSETS_DTYPE, mode="r")  # int64 [lines + 1]
        if int(offsets[0]) != 0 or int(offsets[-1]) != len(ids):
            raise RunDirError(f"{self.path / entry['offsets']} is corrupt (offsets do not span the shards)")
        return SplitData(name=name, lines=int(entry["lines"]), tokens=int(entry["tokens"]),
                         bytes=int(entry["bytes"]), ids=ids, offsets=offsets)

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tokenizer_path)


def open_data_dir(path: str | Path) -> DataDir:
    """Open and verify a data dir: manifest, format version, file sizes and the tokenizer's sha256.

    Raises:
        RunDirError: with a message naming what is missing or wrong.
    """
    path = Path(path)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise RunDirError(f"data dir {path} {what} (create one with lmcli prepare)")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} has no {MANIFEST}: not an lmcli data dir "
                          "(or prepare did not finish)") from None
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path / MANIFEST} cannot be read: {e}") from None
    try:
        return _verify(path, manifest)
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{path / MANIFEST} is malformed ({type(e).__name__}: {e})") from None


def _verify(path: Path, manifest: dict[str, Any]) -> DataDir:
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise RunDirError(f"{path}: unsupported data format_version {version!r} (this lmcli reads "
                          f"{FORMAT_VERSION}); rerun lmcli prepare")
    tok = manifest["tokenizer"]
    tok_path = path / tok["file"]
    if not tok_path.is_file():
        raise RunDirError(f"{path}: tokenizer file {tok['file']} is missing")
    if sha256_file(tok_path) != tok["sha256"]:
        raise RunDirError(f"{tok_path} does not match the manifest (sha256 differs): "
                          "the data dir was modified")
    for name, entry in manifest["splits"].items():
        total = 0
        for shard in entry["shards"]:
            total += int(shard["tokens"])
            _check_size(path / shard["file"], int(shard["tokens"]) * np.dtype(IDS_DTYPE).itemsize, name)
        if total != int(entry["tokens"]):
            raise RunDirError(f"{path / MANIFEST}: {name} shards hold {total} tokens, not {entry['tokens']}")
        offsets_bytes = (int(entry["lines"]) + 1) * np.dtype(OFFSETS_DTYPE).itemsize
        _check_size(path / entry["offsets"], offsets_bytes, name)
    vocab_size = int(tok["vocab_size"])
    counts = np.asarray(manifest["unigram_counts"], dtype=np.int64)  # int64 [V]
    if counts.shape != (vocab_size,):
        raise RunDirError(f"{path / MANIFEST}: unigram_counts has {counts.size} entries, not {vocab_size}")
    return DataDir(path=path, manifest=manifest, tokenizer_path=tok_path, tokenizer_sha256=tok["sha256"],
                   vocab_size=vocab_size, pad_id=int(tok["pad_id"]), unk_id=int(tok["unk_id"]),
                   bos_id=int(tok["bos_id"]), eos_id=int(tok["eos_id"]), unigram_counts=counts)


def _check_size(file: Path, expected: int, split: str) -> None:
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        raise RunDirError(f"{file} ({split} split) is missing") from None
    if size != expected:
        raise RunDirError(f"{file} ({split} split) has {size} bytes, the manifest says {expected}: "
                          "truncated or modified; rerun lmcli prepare")


def encode_lines(lines: Iterable[str], tokenizer: Tokenizer, name: str = "text") -> SplitData:
    """Encode text lines into an in-memory SplitData (e.g. for `eval --text FILE`).

    Lines are cleaned like prepare's input (stripped; empty ones skipped; see `lmcli.data.corpus`), so a
    file gives the same lines, tokens and bytes as it would as a prepared split.
    """
    chunks: list[np.ndarray] = []
    lengths: list[int] = []
    nbytes = 0
    batch: list[str] = []

    def flush() -> None:
        for ids in tokenizer.encode_batch(batch):
            chunks.append(np.asarray([*ids, tokenizer.eos_id], dtype=IDS_DTYPE))  # uint32 [len + 1]
            lengths.append(len(ids) + 1)
        batch.clear()

    for raw in lines:
        text = clean_text(raw)
        if not text:
            continue
        nbytes += len(text.encode("utf-8")) + 1
        batch.append(text)
        if len(batch) >= _ENCODE_BATCH:
            flush()
    flush()
    ids = np.concatenate(chunks) if chunks else np.empty(0, dtype=IDS_DTYPE)  # uint32 [tokens]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)  # int64 [lines + 1]
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
    return SplitData(name=name, lines=len(lengths), tokens=int(offsets[-1]), bytes=nbytes,
                     ids=TokenArray([ids]), offsets=offsets)
