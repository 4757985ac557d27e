"""Streaming corpus input: plain files, gzip files (by the `.gz` suffix) or stdin (`-`), one line at a time.

Cleaning rules, shared by `prepare` and `encode_lines`:
    * each line is read as bytes and decoded as UTF-8 (`strict`: a bad byte is an InputError naming the
      file and 1-based line number; `replace`: bad bytes become U+FFFD);
    * a NUL byte means binary input and is always an InputError;
    * the trailing newline (`\\n` or `\\r\\n`), surrounding whitespace (as `str.strip`) and a UTF-8 byte
      order mark at the start of the file are removed;
    * lines left empty are skipped: they are not stored and do not count as lines anywhere (nor in the
      split index), so line numbers in messages are file line numbers, not stored line numbers.

Nothing here holds more than one line (plus the file buffer) in memory.
"""

from __future__ import annotations

import gzip
import sys
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lmcli.runtime.errors import InputError, OutputError
from lmcli.runtime.fileio import describe_os_error

STDIN = "-"
STDIN_NAME = "<stdin>"
_BOM = "\ufeff"
_BUFFER = 1 << 20


@dataclass(frozen=True)
class Source:
    """One input as the user named it, and the file actually read (a spooled copy for stdin)."""

    name: str  # shown in messages: the path as given, or "<stdin>"
    path: Path  # the file read
    gzipped: bool = False


def source_for(name: str) -> Source:
    """The Source of a path given on the command line (not `-`: see `spool_stdin`)."""
    return Source(name=name, path=Path(name), gzipped=name.endswith(".gz"))


def spool_stdin(dest: Path) -> Source:
    """Copy stdin to `dest` on disk (prepare reads its inputs twice) and return it as a Source.

    Raises:
        InputError: stdin is not available or cannot be read.
        OutputError: `dest` cannot be written (e.g. the disk is full).
    """
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise InputError("cannot read stdin: it is closed or not a byte stream")
    try:
        f = open(dest, "wb")
    except OSError as e:
        raise OutputError(describe_os_error(f"cannot spool stdin to {dest}", e)) from None
    with f:
        while True:
            try:
                block = stream.read(_BUFFER)
            except OSError as e:
                raise InputError(describe_os_error("cannot read stdin", e)) from None
            if not block:
                break
            try:
                f.write(block)
            except OSError as e:
                raise OutputError(describe_os_error(f"cannot spool stdin to {dest}", e)) from None
    return Source(name=STDIN_NAME, path=dest)


@contextmanager
def open_source(source: Source) -> Iterator[BinaryIO]:
    """Open a Source for reading bytes (gunzipping it if needed).

    Raises:
        InputError: the file is missing, a directory, unreadable, or not valid gzip.
    """
    try:
        f: BinaryIO = open(source.path, "rb", buffering=_BUFFER)
    except OSError as e:
        raise InputError(describe_os_error(f"cannot read {source.name}", e)) from None
    with f:
        if source.gzipped:
            with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                yield gz  # type: ignore[misc]
        else:
            yield f


def check_readable(source: Source) -> None:
    """Fail early (before any long work) if a Source cannot be opened or its gzip header is bad."""
    with open_source(source) as f:
        try:
            f.read(1)
        except (OSError, EOFError, zlib.error) as e:
            raise _read_error(source, 1, e) from None


def decode_line(raw: bytes, errors: str, name: str, lineno: int) -> str:
    """Decode and clean one raw line (see the module docstring); '' means skip it.

    Raises:
        InputError: NUL byte, or invalid UTF-8 with errors='strict'.
    """
    if b"\0" in raw:
        raise InputError(f"{name}:{lineno}: binary data (NUL byte); not a text file")
    try:
        text = raw.decode("utf-8", errors)
    except UnicodeDecodeError as e:
        raise InputError(
            f"{name}:{lineno}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
            "use --encoding-errors replace to substitute"
        ) from None
    if lineno == 1 and text.startswith(_BOM):
        text = text[1:]
    return clean_text(text)


def clean_text(text: str) -> str:
    """Strip the newline and surrounding whitespace of a decoded line ('' means skip the line)."""
    return text.strip()


def iter_stream_lines(stream: Iterable[bytes], name: str, errors: str = "strict") -> Iterator[str]:
    """Cleaned, non-empty lines of an open byte stream."""
    for lineno, raw in enumerate(stream, 1):
        text = decode_line(raw, errors, name, lineno)
        if text:
            yield text


def iter_source_lines(source: Source, errors: str = "strict") -> Iterator[str]:
    """Cleaned, non-empty lines of one Source, streamed.

    Raises:
        InputError: unreadable file, corrupt gzip, binary data or (strict) invalid UTF-8.
    """
    with open_source(source) as f:
        lines = _GuardedLines(source, f)
        yield from iter_stream_lines(lines, source.name, errors)


def read_lines(path: str, encoding_errors: str = "strict") -> Iterator[str]:
    """Cleaned, non-empty lines of a file path, a `.gz` path, or `-` (stdin, read once, not spooled).

    For callers such as `eval --text FILE`; feed the result to `shards.encode_lines`.
    """
    if path == STDIN:
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None:
            raise InputError("cannot read stdin: it is closed or not a byte stream")
        source = Source(name=STDIN_NAME, path=Path(STDIN))
        return iter_stream_lines(_GuardedLines(source, stream), STDIN_NAME, encoding_errors)
    return iter_source_lines(source_for(path), encoding_errors)


class _GuardedLines:
    """Iterates raw lines, turning read errors (I/O, corrupt or truncated gzip) into InputError."""

    def __init__(self, source: Source, stream: Iterable[bytes]) -> None:
        self.source, self.stream = source, stream

    def __iter__(self) -> Iterator[bytes]:
        lineno = 0
        try:
            for raw in self.stream:
                lineno += 1
                yield raw
        except (OSError, EOFError, zlib.error) as e:
            raise _read_error(self.source, lineno + 1, e) from None


def _read_error(source: Source, lineno: int, e: Exception) -> InputError:
    if isinstance(e, gzip.BadGzipFile):
        return InputError(f"{source.name}: not a valid gzip file ({e})")
    if isinstance(e, (EOFError, zlib.error)):
        return InputError(f"{source.name}:{lineno}: corrupt or truncated gzip data ({e})")
    assert isinstance(e, OSError)
    return InputError(describe_os_error(f"cannot read {source.name} (line {lineno})", e))
