"""`lmcli prepare`: corpus -> sentencepiece tokenizer -> token shards + manifest, published atomically.

Two streaming passes over the inputs: the first feeds the train split to sentencepiece (skipped when
`--tokenizer` reuses a model), the second encodes every split into shards. The whole data dir is built in
a temporary sibling `.{name}.tmp-XXXX` and renamed into place at the end; on any error, Ctrl-C included,
the temporary dir is removed and an existing data dir is left untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from lmcli import __version__
from lmcli.config import VOCAB_MAX, PrepareConfig
from lmcli.data.corpus import STDIN, Source, check_readable, source_for, spool_stdin
from lmcli.data.layout import DTYPE_NAME, FORMAT_VERSION, MANIFEST, SPLITS, TOKENIZER_FILE, TRAIN
from lmcli.data.splits import SplitPlan
from lmcli.data.tokenizer import Tokenizer, reuse_tokenizer, train_tokenizer
from lmcli.data.writer import SplitWriter, write_file
from lmcli.runtime.errors import ConfigError, InputError, OutputError
from lmcli.runtime.fileio import describe_os_error
from lmcli.runtime.progress import Progress, Task

_BATCH_LINES = 1024  # lines encoded per sentencepiece call
_SPOOL = ".stdin.spool"


def prepare(inputs: Sequence[str], out_dir: Path, cfg: PrepareConfig, progress: Progress,
            valid_files: Sequence[str] = (), test_files: Sequence[str] = (), force: bool = False) -> dict:
    """Build a data dir from text inputs.

    Args:
        inputs: text files, `.gz` files or `-` (stdin, at most once over all file arguments).
        out_dir: the data dir to create (replaced only with `force`, and only once the new one is complete).
        cfg: tokenizer, split and shard options.
        progress: where progress goes; nothing is printed directly.
        valid_files, test_files: explicit valid/test splits; when either is given, all `inputs` are train.
        force: replace an existing, non-empty data dir.

    Returns:
        A JSON-serialisable summary: data_dir, vocab_size, tokenizer_sha256, tokenizer_trained,
        model_type, splits {name: {lines, tokens, bytes}}, seconds.

    Raises:
        InputError, ConfigError, OutputError: see `lmcli.runtime.errors`.
    """
    started = time.monotonic()
    cfg.validate()
    inputs, valid_files, test_files = list(inputs), list(valid_files), list(test_files)
    _check_arguments(inputs, valid_files, test_files)
    out_dir = Path(out_dir)
    target = Path(os.path.abspath(out_dir))
    _check_out_dir(target, force)
    for name in (*inputs, *valid_files, *test_files):
        if name != STDIN:
            check_readable(source_for(name))
    reused = reuse_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    tmp = _make_temp_dir(target)
    try:
        plan = _make_plan(inputs, valid_files, test_files, cfg, tmp / _SPOOL)
        tok = reused if reused is not None else _train(plan, cfg, progress)
        if tok.vocab_size != cfg.vocab_size and reused is None and cfg.vocab_size != VOCAB_MAX:
            progress.log(f"note: the tokenizer has {tok.vocab_size} pieces (--vocab-size {cfg.vocab_size}): "
                         f"a {cfg.model_type} model of this corpus has no more")
        write_file(tmp / TOKENIZER_FILE, tok.serialized)
        splits, counts = _encode(plan, tok, tmp, cfg, progress)
        if splits[TRAIN]["lines"] == 0:
            held = 0 if plan.explicit else sum(splits[s]["lines"] for s in SPLITS)
            raise InputError(_no_train_lines(inputs, held))
        manifest = _manifest(inputs, valid_files, test_files, cfg, tok, reused is None, splits, counts)
        (tmp / _SPOOL).unlink(missing_ok=True)
        write_file(tmp / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
        _publish(tmp, target, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "data_dir": str(out_dir), "vocab_size": tok.vocab_size, "tokenizer_sha256": tok.sha256,
        "tokenizer_trained": reused is None, "model_type": manifest["tokenizer"]["model_type"],
        "splits": {s: {k: splits[s][k] for k in ("lines", "tokens", "bytes")} for s in SPLITS},
        "seconds": round(time.monotonic() - started, 3),
    }


def _check_arguments(inputs: list[str], valid_files: list[str], test_files: list[str]) -> None:
    if not inputs:
        raise InputError("no input files given")
    if [*inputs, *valid_files, *test_files].count(STDIN) > 1:
        raise ConfigError("'-' (stdin) can be given only once over all input, --valid and --test files")


def _check_out_dir(target: Path, force: bool) -> None:
    if not (target.exists() or target.is_symlink()):
        return
    if not target.is_dir():
        raise OutputError(f"{target} exists and is not a directory")
    if not any(target.iterdir()):
        return
    if not force:
        raise OutputError(f"{target} exists; use --force to replace it")
    if not (target / MANIFEST).exists():
        raise OutputError(f"{target} exists and is not an lmcli data dir (no {MANIFEST}); "
                          "refusing to replace it, even with --force")


def _make_temp_dir(target: Path) -> Path:
    """An empty `.{name}.tmp-XXXXXXXX` next to target (plain mkdir, so the umask applies, unlike mkdtemp)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
            try:
                tmp.mkdir()
                return tmp
            except FileExistsError:
                continue
    except OSError as e:
        raise OutputError(describe_os_error(f"cannot create a directory next to {target}", e)) from None


def _make_plan(inputs: list[str], valid_files: list[str], test_files: list[str], cfg: PrepareConfig,
               spool: Path) -> SplitPlan:
    def sources(names: list[str]) -> tuple[Source, ...]:
        return tuple(spool_stdin(spool) if n == STDIN else source_for(n) for n in names)

    return SplitPlan(inputs=sources(inputs), valid=sources(valid_files), test=sources(test_files),
                     explicit=bool(valid_files or test_files), seed=cfg.seed,
                     valid_fraction=cfg.valid_fraction, test_fraction=cfg.test_fraction,
                     encoding_errors=cfg.encoding_errors)


def _train(plan: SplitPlan, cfg: PrepareConfig, progress: Progress) -> Tokenizer:
    """First pass: train the tokenizer on the train split's lines."""
    held = [0]  # lines routed to valid/test, for the error message

    def train_lines() -> Iterator[str]:
        for split, line in plan.lines(only=[TRAIN] if plan.explicit else None):
            if split == TRAIN:
                yield line
            else:
                held[0] += 1

    with progress.task("tokenizer") as task:
        lines = _counted(train_lines(), task)
        first = next(lines, None)
        if first is None:
            raise InputError(_no_train_lines([s.name for s in plan.inputs], held[0]))
        return Tokenizer(train_tokenizer(chain([first], lines), cfg))


def _counted(lines: Iterator[str], task: Task, every: int = 4096) -> Iterator[str]:
    n = 0
    for n, line in enumerate(lines, 1):
        if n % every == 0:
            task.update(every, lines=n)
        yield line
    task.update(n % every, lines=n)


def _encode(plan: SplitPlan, tok: Tokenizer, directory: Path, cfg: PrepareConfig,
            progress: Progress) -> tuple[dict[str, dict[str, Any]], np.ndarray]:
    """Second pass: encode every split into shards; returns manifest entries and train counts int64 [V]."""
    with ExitStack() as stack:
        writers = {s: stack.enter_context(SplitWriter(directory, s, cfg.shard_tokens, tok.eos_id,
                                                      tok.vocab_size if s == TRAIN else None))
                   for s in SPLITS}
        tasks = {s: stack.enter_context(progress.task(f"encode {s}")) if plan.may_have(s) else Task()
                 for s in SPLITS}
        pending: dict[str, list[str]] = {s: [] for s in SPLITS}
        for split, line in plan.lines():
            batch = pending[split]
            batch.append(line)
            if len(batch) >= _BATCH_LINES:
                _write_batch(batch, tok, writers[split], tasks[split])
        for s in SPLITS:
            _write_batch(pending[s], tok, writers[s], tasks[s])
        entries = {s: writers[s].finish() for s in SPLITS}
        counts = writers[TRAIN].counts
        assert counts is not None
        return entries, counts


def _write_batch(batch: list[str], tok: Tokenizer, writer: SplitWriter, task: Task) -> None:
    if not batch:
        return
    for text, ids in zip(batch, tok.encode_batch(batch), strict=True):
        writer.add(ids, len(text.encode("utf-8")) + 1)
    task.update(len(batch), lines=writer.lines, tokens=writer.tokens)
    batch.clear()


def _no_train_lines(inputs: list[str], held: int) -> str:
    names = ", ".join(inputs)
    if held:
        return (f"{names}: no text lines left for training: all {held} lines went to valid/test; "
                "give more text or lower --valid-fraction/--test-fraction")
    return f"{names}: no text lines (empty or whitespace-only input)"


def _manifest(inputs: list[str], valid_files: list[str], test_files: list[str], cfg: PrepareConfig,
              tok: Tokenizer, trained: bool, splits: dict[str, dict[str, Any]], counts: np.ndarray) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "lmcli_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        "valid_files": valid_files,
        "test_files": test_files,
        "options": _options(cfg, tok),
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": tok.sha256, "model_type": tok.model_type,
                      "vocab_size": tok.vocab_size, **{f"{k}_id": v for k, v in tok.special_ids().items()},
                      "trained": trained},
        "splits": splits,
        "dtype": DTYPE_NAME,
        "unigram_counts": [int(c) for c in counts],
    }


def _options(cfg: PrepareConfig, tok: Tokenizer) -> dict[str, Any]:
    """The options as asked (`vocab_size` may be "max"), with the vocabulary size they resolved to beside it."""
    options = dataclasses.asdict(cfg)
    at = list(options).index("vocab_size") + 1
    items = list(options.items())
    return dict(items[:at] + [("vocab_size_resolved", tok.vocab_size)] + items[at:])


def _publish(tmp: Path, target: Path, force: bool) -> None:
    """Rename the finished temp dir to `target`, replacing an old data dir only now (with force)."""
    old = None
    try:
        if target.is_dir() and any(target.iterdir()):
            if not force:
                raise OutputError(f"{target} exists; use --force to replace it")
            old = tmp.with_name(tmp.name.replace(".tmp-", ".old-", 1))
            os.rename(target, old)
        os.rename(tmp, target)
    except OSError as e:
        if old is not None and not target.exists():
            os.rename(old, target)
        raise OutputError(describe_os_error(f"cannot move the new data dir to {target}", e)) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
