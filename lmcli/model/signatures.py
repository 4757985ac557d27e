"""The export signatures: the one table the inference graph, the exporters and the README's table are built from.

Every signature is the full softmax with the trained W [V, D] and b [V]. `score` sums log p(ids[t + 1] | ids[:t + 1])
for t < lengths - 1 (ids hold the start id first); positions at and past `lengths` are padding. The stepwise
ones (`init_state`, `step`) exist only for a network with a carried state (the CLI's LSTM); an export of a user's
backbone (`lmcli.keras.export`) has `log_probs` and `score`.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class Signature:
    """One exported function: its inputs as (name, shape, dtype), its outputs as text, and whether it needs the
    network's carried state (`{state}` stands for h_0, c_0, h_1, c_1, ..., each [B, H])."""

    inputs: tuple[tuple[str, tuple, tf.DType, str], ...]  # (name, shape, dtype, shape as the README writes it)
    outputs: str
    stepwise: bool
    doc: str


SIGNATURES: dict[str, Signature] = {
    "log_probs": Signature((("ids", (None, None), tf.int32, "[B, T]"),), "log_probs [B, T, V]", False,
                           "log-probabilities of the next token at every position (also `serving_default`)"),
    "score": Signature((("ids", (None, None), tf.int32, "[B, T]"), ("lengths", (None,), tf.int32, "[B]")),
                       "loglik [B], tokens [B]", False,
                       "log-likelihood of each row's tokens after the first, and how many were scored"),
    "init_state": Signature((("batch_size", (), tf.int32, "[]"),), "{state}", True, "the zero state for B rows"),
    "step": Signature((("ids", (None,), tf.int32, "[B]"),), "log_probs [B, V], {state}", True,
                      "one token per row with the state carried (its inputs: ids, then {state})"),
}
DEFAULT = "log_probs"  # also saved as serving_default


def input_specs(name: str, state_names: tuple[str, ...] = (), hidden: int = 0) -> list[tf.TensorSpec]:
    """The `input_signature` of signature `name`; `step` also takes the state (`state_names`, [B, hidden] each)."""
    specs = [tf.TensorSpec(shape, dtype, name=n) for n, shape, dtype, _ in SIGNATURES[name].inputs]
    if name == "step":
        specs += [tf.TensorSpec([None, hidden], tf.float32, name=n) for n in state_names]
    return specs


def names(stepwise: bool) -> list[str]:
    """The signatures an export has, `serving_default` included."""
    return sorted([n for n, s in SIGNATURES.items() if stepwise or not s.stepwise] + ["serving_default"])


def loglik(logits: tf.Tensor, ids: tf.Tensor, lengths: tf.Tensor) -> dict[str, tf.Tensor]:
    """`score`'s outputs from the full logits (B, T - 1, V) at positions 0..T-2 of ids (B, T) with `lengths` (B,)."""
    lp = tf.nn.log_softmax(logits)  # (B, T-1, V)
    target = tf.gather(lp, ids[:, 1:], batch_dims=2)  # (B, T-1)
    real = tf.sequence_mask(lengths - 1, tf.shape(ids)[1] - 1)  # (B, T-1)
    return {"loglik": tf.reduce_sum(tf.where(real, target, 0.0), axis=1),
            "tokens": tf.reduce_sum(tf.cast(real, tf.int32), axis=1)}


def markdown_table() -> str:
    """The README's table of signatures (tests check the README holds exactly this)."""
    rows = ["| signature | inputs | outputs | what | user backbones |", "|---|---|---|---|---|"]
    for name, s in SIGNATURES.items():
        inputs = ", ".join(f"{n} {shown}" for n, _, _, shown in s.inputs)
        rows.append(f"| `{name}` | {inputs} | {s.outputs} | {s.doc} | {'no' if s.stepwise else 'yes'} |")
    return "\n".join(rows)
