"""`lmcli eval`: full-softmax metrics of a run or an export, on a split or a text file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lmcli.cli.options import (
    CheckpointOpt,
    ConfigOpt,
    JsonOpt,
    ModelArg,
    QuietOpt,
    choices,
    emit_json,
    print_table,
    progress_for,
)
from lmcli.config import ENCODING_ERRORS
from lmcli.data.layout import SPLITS


def evaluate(
    model: ModelArg,
    split: Annotated[str, typer.Option(help="Split of the run's data dir.", **choices(SPLITS))] = "test",
    text: Annotated[Optional[Path], typer.Option(help="Evaluate on this text file instead of a split.",
                                                 show_default=False)] = None,
    per_line: Annotated[Optional[Path], typer.Option(help="Write per-line loglik/tokens/perplexity as JSONL "
                                                     "(each line scored alone, from a fresh state).",
                                                     show_default=False)] = None,
    token_logprobs: Annotated[bool, typer.Option("--token-logprobs", help="With --per-line: add each "
                                                 "line's pieces and log-probs.")] = False,
    whole_lines: Annotated[bool, typer.Option("--whole-lines", help="Score each line whole, alone, from a "
                                              "fresh state (default: the run's own layout, as training's "
                                              "validation scores it: pack windows, or pad pieces of at most "
                                              "--max-len).")] = False,
    checkpoint: CheckpointOpt = "best",
    batch_size: Annotated[Optional[int], typer.Option(help="Rows per batch \\[default: the run's; in pack mode "
                                                      "another value cuts the stream into other rows].",
                                                      show_default=False)] = None,
    encoding_errors: Annotated[str, typer.Option(help="--text: invalid UTF-8 stops, or becomes U+FFFD.",
                                                 **choices(ENCODING_ERRORS))] = "strict",
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Tokens, NLL (nats), perplexity, bits per byte and top-1/top-5 accuracy, always with the full softmax."""
    from lmcli.evaluation import evaluate as run_eval

    result = run_eval(model, split=split, text=text, checkpoint=checkpoint, batch_size=batch_size,
                      encoding_errors=encoding_errors, per_line=per_line, token_logprobs=token_logprobs,
                      whole_lines=whole_lines, progress=progress_for(quiet))
    if json_out:
        emit_json(result)
    else:
        print_table(f"eval {result['source']} ({result['model_kind']}, checkpoint step {result['checkpoint_step']})",
                    [(k, result.get(k)) for k in ("tokens", "lines", "bytes", "nll", "perplexity", "bits_per_byte",
                                                  "top1", "top5", "unigram_perplexity", "tokens_per_s", "per_line")
                     if k in result])
