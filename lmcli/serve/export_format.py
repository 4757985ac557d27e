"""The export format, shared by its writer (`exporting`) and its readers (`inference`, `eval`, `generate`).

EXPORT_DIR/
    saved_model.pb, variables/      signatures log_probs, score, init_state, step, serving_default
    assets/tokenizer.model          the sentencepiece model, tracked as a SavedModel asset
    lmcli.json                      model and data config, vocab size, special ids, start id, loss, step, version
"""

from __future__ import annotations

import json
from pathlib import Path

from lmcli.runtime.errors import RunDirError

META = "lmcli.json"
FORMAT, FORMAT_VERSION = "lmcli-export", 1


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads((Path(path) / META).read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} is not an lmcli export ({META}: {e})") from None
    if meta.get("format") != FORMAT:
        raise RunDirError(f"{path} is not an lmcli export")
    return meta


def is_export_dir(path: Path) -> bool:
    return (Path(path) / META).exists() and (Path(path) / "saved_model.pb").exists()
