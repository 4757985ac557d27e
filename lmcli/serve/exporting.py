"""`lmcli export`: a checkpoint -> a self-contained SavedModel that needs nothing but TensorFlow.

EXPORT_DIR/
    saved_model.pb, variables/      the signatures of `lmcli.model.signatures` (all of them) and serving_default
    assets/tokenizer.model          the sentencepiece model, tracked as a SavedModel asset
    lmcli.json                      model config, vocab size, special ids, start id, loss, step, version

The export is written under a temporary sibling name, checked (`verify`) by reloading it in a fresh
Python process that cannot import keras or lmcli, and only then renamed into place.

`export_model` does the same for a model trained through `lmcli.keras` (any `SoftmaxModel`): the signatures that
need no carried state (`log_probs`, `score`), with no tokenizer and no lmcli.json.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from lmcli import __version__
from lmcli.data.pipeline import start_id
from lmcli.data.tokenizer import Tokenizer
from lmcli.model.graph import InferenceGraph
from lmcli.model.signatures import DEFAULT, SIGNATURES, input_specs, loglik, names
from lmcli.runtime.errors import OutputError
from lmcli.runtime.fileio import atomic_write_text, describe_os_error
from lmcli.serve.export_format import FORMAT, FORMAT_VERSION, META
from lmcli.train.checkpoints import RunPaths, load_model

TOLERANCE = 1e-5

# Runs in a subprocess: plain TensorFlow, with keras and lmcli made unimportable.
_VERIFY = r"""
import sys, json
import numpy as np
for blocked in ("keras", "lmcli", "tf_keras"):
    sys.modules[blocked] = None
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
ids = np.load(sys.argv[2])
out = {"signatures": sorted(m.signatures)}
lp = m.signatures["log_probs"](ids=tf.constant(ids))["log_probs"].numpy()
np.save(sys.argv[3], lp)
print(json.dumps(out))
"""


def verify_batch(vocab_size: int, start_id: int, seed: int = 0) -> np.ndarray:
    """A fixed (2, 9) id batch starting with the start id."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, max(vocab_size, 5), size=(2, 9)).astype(np.int32) % vocab_size
    ids[:, 0] = start_id
    return ids


def reference_log_probs(model, ids: np.ndarray) -> np.ndarray:
    hidden = model.forward(tf.constant(ids))[0]  # (B, T, D)
    return tf.nn.log_softmax(model.full_logits(hidden)).numpy()  # (B, T, V)


def verify_export(path: Path, model, start_id: int, stepwise: bool = True) -> dict:
    """Reload `path` in a keras-free subprocess and compare log_probs with the model's (1e-5)."""
    ids = verify_batch(model.vocab_size, start_id)
    want = reference_log_probs(model, ids)
    ids_file, out_file = path.parent / f".{path.name}.ids.npy", path.parent / f".{path.name}.out.npy"
    np.save(ids_file, ids)
    try:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run([sys.executable, "-c", _VERIFY, str(path), str(ids_file), str(out_file)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise OutputError(f"export check failed: the export did not reload without keras: {last}")
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        got = np.load(out_file)
    finally:
        ids_file.unlink(missing_ok=True)
        out_file.unlink(missing_ok=True)
    missing = set(names(stepwise)) - set(info["signatures"])
    if missing:
        raise OutputError(f"export check failed: signatures missing: {sorted(missing)}")
    diff = float(np.max(np.abs(got - want)))
    if not diff <= TOLERANCE:
        raise OutputError(f"export check failed: log_probs differ from the checkpoint by {diff:.3g}")
    return {"max_abs_diff": diff, "signatures": info["signatures"]}


def export(run_dir: Path, out: Path, checkpoint: str = "best", verify: bool = True, force: bool = False) -> dict:
    """Export a run dir's checkpoint as an inference SavedModel. Returns a JSON-ready summary."""
    out = _check_out(Path(out), force)
    model, cfg, step = load_model(run_dir, checkpoint)
    paths = RunPaths(Path(run_dir))
    tokenizer = Tokenizer.load(paths.tokenizer)
    start = start_id(cfg.data.padding, tokenizer)

    def write(tmp: Path) -> dict:
        graph = InferenceGraph(model, str(paths.tokenizer))
        tf.saved_model.save(graph, str(tmp), signatures=graph.signatures())
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "lmcli_version": __version__,
                "checkpoint_step": step, "checkpoint": checkpoint, "loss_trained": cfg.loss.name,
                "model": cfg.to_dict()["model"], "data": cfg.to_dict()["data"], "data_dir": cfg.data_dir,
                "vocab_size": tokenizer.vocab_size, "special_ids": tokenizer.special_ids(), "start_id": start,
                "state_names": graph.state_names, "tokenizer": "assets/tokenizer.model",
                "tokenizer_sha256": tokenizer.sha256, "signatures": sorted(graph.signatures())}
        atomic_write_text(tmp / META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return verify_export(tmp, model, start) if verify else {}

    check = _staged(out, write)
    return {"export_dir": str(out), "checkpoint_step": step, "verified": bool(check),
            **({"max_abs_diff": check["max_abs_diff"]} if check else {}), "signatures": names(stepwise=True)}


class ModelExport(tf.Module):
    """The stateless signatures (`log_probs`, `score`) of any `SoftmaxModel`, on the model's own variables."""

    def __init__(self, model) -> None:
        super().__init__(name="lmcli_model_export")
        self.model = model

        def log_probs(ids):
            hidden = model.forward(ids)[0]  # (B, T, D)
            return {"log_probs": tf.nn.log_softmax(model.full_logits(hidden))}  # (B, T, V)

        def score(ids, lengths):
            hidden = model.forward(ids, mask=tf.sequence_mask(lengths, tf.shape(ids)[1]))[0]  # (B, T, D)
            return loglik(model.full_logits(hidden[:, :-1]), ids, lengths)

        for name, fn in {"log_probs": log_probs, "score": score}.items():
            setattr(self, name, tf.function(fn, input_signature=input_specs(name)))

    def signatures(self) -> dict:
        return {"serving_default": getattr(self, DEFAULT),
                **{n: getattr(self, n) for n, s in SIGNATURES.items() if not s.stepwise}}


def export_model(model, out: Path, verify: bool = True, force: bool = False) -> dict:
    """Export a model trained through `lmcli.keras` (any built `SoftmaxModel`) as a SavedModel with `log_probs`
    and `score`, written under a temporary name, reloaded without keras and checked, then renamed into place."""
    out = _check_out(Path(out), force)

    def write(tmp: Path) -> dict:
        module = ModelExport(model)
        tf.saved_model.save(module, str(tmp), signatures=module.signatures())
        return verify_export(tmp, model, 0, stepwise=False) if verify else {}

    check = _staged(out, write)
    return {"export_dir": str(out), "verified": bool(check), "signatures": names(stepwise=False),
            **({"max_abs_diff": check["max_abs_diff"]} if check else {})}


def _check_out(out: Path, force: bool) -> Path:
    if out.exists() and not force:
        raise OutputError(f"{out} exists; use --force to replace it")
    return out


def _staged(out: Path, write) -> dict:
    """Run `write(tmp)` on a temporary sibling of `out`, then rename it into place; nothing is left on failure."""
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        result = write(tmp)
        _publish(tmp, out)
        return result
    except OSError as e:
        raise OutputError(describe_os_error(f"cannot write the export {out}", e)) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` (with --force) is replaced only now."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
