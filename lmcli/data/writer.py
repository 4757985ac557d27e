"""Writing one split's token shards and offsets file (the format is described in `layout`).

Each line is stored as its piece ids followed by the eos id. A new shard starts when the next line would
push the current one past `shard_tokens` (lines are never cut; a line longer than `shard_tokens` gets a
shard of its own). Files are written under a `.part` name and renamed when complete. Every byte goes
through `write_chunk`, and every OSError becomes an OutputError.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Optional

import numpy as np

from lmcli.data.layout import IDS_DTYPE, OFFSETS_DTYPE, offsets_file, shard_file
from lmcli.runtime.errors import OutputError
from lmcli.runtime.fileio import describe_os_error

_FLUSH_TOKENS = 1 << 18  # ids buffered before a write (1 MiB)
_FLUSH_LINES = 1 << 16  # offsets buffered before a write


def write_chunk(f: BinaryIO, data: bytes) -> None:
    """Write bytes to an open shard or offsets file: the one write path (tests make it raise ENOSPC)."""
    f.write(data)


def write_file(path: Path, data: bytes) -> None:
    """Write a whole small file (tokenizer, manifest) under a `.part` name, then rename it into place.

    Unlike `fileio.atomic_write_bytes` (mkstemp, mode 0600) the file gets the usual umask permissions.
    """
    part = path.with_name(path.name + ".part")
    with _writing(path):
        try:
            with open(part, "wb") as f:
                write_chunk(f, data)
            os.replace(part, path)
        except BaseException:
            part.unlink(missing_ok=True)
            raise


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise OutputError(describe_os_error(f"cannot write {path}", e)) from None


class SplitWriter:
    """Appends encoded lines of one split to `{split}.{k:05d}.ids` shards and `{split}.offsets`.

    Use as a context manager (files are closed on error) and call `finish()` for the manifest entry.
    """

    def __init__(self, directory: Path, split: str, shard_tokens: int, eos_id: int,
                 count_vocab: Optional[int] = None) -> None:
        """
        Args:
            directory: where the files go (the temporary data dir).
            split: train | valid | test.
            shard_tokens: roll over to a new shard when the next line would exceed this many tokens.
            eos_id: appended to every line.
            count_vocab: if given (V), count token occurrences into `counts` (int64 [V]).
        """
        self.directory, self.split = Path(directory), split
        self.shard_tokens, self.eos_id = shard_tokens, eos_id
        self.lines = self.tokens = self.bytes = 0
        self.shards: list[dict[str, Any]] = []
        self.counts = None if count_vocab is None else np.zeros(count_vocab, dtype=np.int64)  # int64 [V]
        self._ids: list[int] = []  # pending ids of the current shard
        self._offsets: list[int] = [0]  # pending offsets (global token positions)
        self._shard: Optional[BinaryIO] = None
        self._shard_tokens_now = 0
        self._offsets_path = self.directory / offsets_file(split)
        with _writing(self._offsets_path):
            self._offsets_f: Optional[BinaryIO] = open(self._part(self._offsets_path), "wb")

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, ids: Sequence[int], nbytes: int) -> None:
        """Append one line's piece ids (eos is added here); `nbytes` is its UTF-8 length plus 1."""
        n = len(ids) + 1
        if self._shard_tokens_now and self._shard_tokens_now + n > self.shard_tokens:
            self._end_shard()
        self._ids.extend(ids)
        self._ids.append(self.eos_id)
        self._shard_tokens_now += n
        self.tokens += n
        self.lines += 1
        self.bytes += nbytes
        self._offsets.append(self.tokens)
        if len(self._ids) >= _FLUSH_TOKENS:
            self._flush_ids()
        if len(self._offsets) >= _FLUSH_LINES:
            self._flush_offsets()

    def finish(self) -> dict[str, Any]:
        """Complete every file and return this split's manifest entry."""
        if self._shard_tokens_now:
            self._end_shard()
        self._flush_offsets()
        assert self._offsets_f is not None
        with _writing(self._offsets_path):
            self._offsets_f.close()
            self._offsets_f = None
            os.replace(self._part(self._offsets_path), self._offsets_path)
        return {"lines": self.lines, "tokens": self.tokens, "bytes": self.bytes, "shards": self.shards,
                "offsets": self._offsets_path.name}

    def close(self) -> None:
        """Close any open file (after an error; the caller removes the directory)."""
        for f in (self._shard, self._offsets_f):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self._shard = self._offsets_f = None

    def _shard_path(self) -> Path:
        return self.directory / shard_file(self.split, len(self.shards))

    @staticmethod
    def _part(path: Path) -> Path:
        return path.with_name(path.name + ".part")

    def _flush_ids(self) -> None:
        if not self._ids:
            return
        arr = np.asarray(self._ids, dtype=IDS_DTYPE)  # uint32 [n]
        self._ids = []
        path = self._shard_path()
        with _writing(path):
            if self._shard is None:
                self._shard = open(self._part(path), "wb")
            write_chunk(self._shard, arr.tobytes())
        if self.counts is not None:
            self.counts += np.bincount(arr, minlength=len(self.counts))  # int64 [V]

    def _flush_offsets(self) -> None:
        if not self._offsets:
            return
        arr = np.asarray(self._offsets, dtype=OFFSETS_DTYPE)  # int64 [n]
        self._offsets = []
        assert self._offsets_f is not None
        with _writing(self._offsets_path):
            write_chunk(self._offsets_f, arr.tobytes())

    def _end_shard(self) -> None:
        self._flush_ids()
        path = self._shard_path()
        assert self._shard is not None
        with _writing(path):
            self._shard.close()
            self._shard = None
            os.replace(self._part(path), path)
        self.shards.append({"file": path.name, "tokens": self._shard_tokens_now})
        self._shard_tokens_now = 0
