"""`lmcli prepare`: train or reuse a tokenizer, split and encode a corpus into token shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lmcli.cli.binding import bind, given, overrides
from lmcli.cli.options import ConfigOpt, JsonOpt, QuietOpt, choices, emit_json, print_table, progress_for
from lmcli.config import ENCODING_ERRORS, MODEL_TYPES, VOCAB_MAX, PrepareConfig

D = PrepareConfig()


def _vocab_size(value: str) -> int | str:
    """--vocab-size: a whole number, or `max`."""
    if value == VOCAB_MAX:
        return value
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"'{value}' is not a whole number or {VOCAB_MAX}") from None


def prepare(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(help="Text files (.gz ok), or - for stdin.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Data dir to write.", show_default=False)],
    vocab_size: Annotated[str, typer.Option(help="Tokenizer vocabulary size, specials included; max = every "
                                            "piece the corpus supports.", callback=_vocab_size,
                                            metavar="N|max")] = str(D.vocab_size),
    model_type: Annotated[str, typer.Option(help="Tokenizer model.", **choices(MODEL_TYPES))] = D.model_type,
    character_coverage: Annotated[float, typer.Option(help="Characters covered.")] = D.character_coverage,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Reuse this sentencepiece .model.",
                                                      show_default=False)] = None,
    valid: Annotated[Optional[list[str]], typer.Option(help="Validation file (repeatable).",
                                                       show_default=False)] = None,
    test: Annotated[Optional[list[str]], typer.Option(help="Test file (repeatable).", show_default=False)] = None,
    valid_fraction: Annotated[float, typer.Option(help="Lines sent to valid.")] = D.valid_fraction,
    test_fraction: Annotated[float, typer.Option(help="Lines sent to test.")] = D.test_fraction,
    seed: Annotated[int, typer.Option(help="Split and tokenizer seed.")] = D.seed,
    encoding_errors: Annotated[str, typer.Option(help="Invalid UTF-8: stop with the file and line named, or "
                                                 "replace it by U+FFFD.", **choices(ENCODING_ERRORS))
                               ] = D.encoding_errors,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing data dir.")] = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train (or reuse) a sentencepiece tokenizer and write train/valid/test token shards."""
    from lmcli.data.prepare import prepare as run_prepare

    cfg = PrepareConfig(**overrides(PREPARE, given(ctx))["prepare"])
    cfg.validate()
    result = run_prepare(inputs, out, cfg, progress_for(quiet), valid_files=valid or (),
                         test_files=test or (), force=force)
    if json_out:
        emit_json(result)
    elif not quiet:
        print_table(f"prepared {out}", [(k, v) for k, v in _flat(result)])


# Each option above sets PrepareConfig's field of its name; the sampling and shard sizes have no option.
PREPARE = bind(prepare, {"prepare": PrepareConfig},
               internal=(("prepare", "max_sentences"), ("prepare", "shard_tokens")),
               extras=("ctx", "inputs", "out", "valid", "test", "force", "config", "json_out", "quiet"))


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
