"""The inference graph: the trained network re-expressed in plain TensorFlow ops (no Keras), as a tf.Module.

It is what `lmcli export` saves, so an export loads with `tf.saved_model.load` alone. Gate order and
activations follow Keras' LSTM (i, f, c, o; sigmoid gates, tanh cell), so outputs equal the checkpoint's.

Its signatures are those of `lmcli.model.signatures.SIGNATURES` (all of them: this network carries a state).
Extra (non-signature) functions used by lmcli's eval and generate: `score_batch`, `prefill`.
"""

from __future__ import annotations

import tensorflow as tf

from lmcli.model.scoring import token_scores
from lmcli.model.signatures import DEFAULT, SIGNATURES, input_specs, loglik


class InferenceGraph(tf.Module):
    """Pure-TF copy of a LanguageModel's weights and forward pass."""

    def __init__(self, model, tokenizer_path: str | None = None) -> None:
        super().__init__(name="lmcli_inference")
        w, b = model.output_weights()
        self.embedding = tf.Variable(model.embedding.embeddings.numpy(), name="embedding")  # (V, E)
        self.kernels = [tf.Variable(lstm.cell.kernel.numpy(), name=f"kernel_{i}") for i, lstm in
                        enumerate(model.lstms)]  # (E or H, 4H)
        self.recurrent = [tf.Variable(lstm.cell.recurrent_kernel.numpy(), name=f"recurrent_{i}")
                          for i, lstm in enumerate(model.lstms)]  # (H, 4H)
        self.biases = [tf.Variable(lstm.cell.bias.numpy(), name=f"bias_{i}") for i, lstm in
                       enumerate(model.lstms)]  # (4H,)
        self.projection = (tf.Variable(model.projection.kernel.numpy(), name="projection")
                           if model.projection is not None else None)  # (H, D)
        self.tied = bool(model.tie_embeddings)
        self.output_kernel = None if self.tied else tf.Variable(w.numpy(), name="output_kernel")  # (V, D)
        self.output_bias = tf.Variable(b.numpy(), name="output_bias")  # (V,)
        self.hidden = int(model.hidden)
        self.num_layers = len(self.kernels)
        self.tokenizer = tf.saved_model.Asset(tokenizer_path) if tokenizer_path else None
        self.state_names = [f"{k}_{i}" for i in range(self.num_layers) for k in ("h", "c")]
        self._build_signatures()

    # ---- the network ------------------------------------------------------------------------------
    def _w(self) -> tf.Tensor:
        return self.embedding if self.tied else self.output_kernel

    def _cell(self, i: int, xw: tf.Tensor, h: tf.Tensor, c: tf.Tensor):
        z = xw + tf.matmul(h, self.recurrent[i])  # (B, 4H)
        zi, zf, zc, zo = tf.split(z, 4, axis=-1)
        c_new = tf.sigmoid(zf) * c + tf.sigmoid(zi) * tf.tanh(zc)
        return tf.sigmoid(zo) * tf.tanh(c_new), c_new

    def _project(self, x: tf.Tensor) -> tf.Tensor:
        return x if self.projection is None else tf.tensordot(x, self.projection, axes=1)

    def _logits(self, hidden: tf.Tensor) -> tf.Tensor:
        return tf.tensordot(hidden, self._w(), axes=[[-1], [1]]) + self.output_bias  # (..., V)

    def _sequence(self, ids: tf.Tensor, mask: tf.Tensor, state: list):
        """ids (B, T), mask (B, T) bool -> hidden (B, T, D), final [h, c] per layer (masked steps keep state)."""
        x = tf.gather(self.embedding, ids)  # (B, T, E)
        final = []
        for i in range(self.num_layers):
            xw = tf.tensordot(x, self.kernels[i], axes=1) + self.biases[i]  # (B, T, 4H)

            def body(carry, inputs, i=i):
                h, c = carry
                xw_t, m_t = inputs  # (B, 4H), (B,)
                h_new, c_new = self._cell(i, xw_t, h, c)
                keep = m_t[:, None]
                return tf.where(keep, h_new, h), tf.where(keep, c_new, c)

            hs, cs = tf.scan(body, (tf.transpose(xw, [1, 0, 2]), tf.transpose(mask)),
                             initializer=(state[2 * i], state[2 * i + 1]))  # (T, B, H)
            x = tf.transpose(hs, [1, 0, 2])  # (B, T, H)
            final += [hs[-1], cs[-1]]
        return self._project(x), final

    def _zeros(self, batch_size) -> list:
        zeros = tf.zeros(tf.stack([batch_size, self.hidden]))
        return [zeros for _ in self.state_names]

    # ---- signatures -------------------------------------------------------------------------------
    def _build_signatures(self) -> None:
        state_specs = [tf.TensorSpec([None, self.hidden], tf.float32, name=n) for n in self.state_names]

        def log_probs(ids):
            mask = tf.ones_like(ids, tf.bool)
            hidden, _ = self._sequence(ids, mask, self._zeros(tf.shape(ids)[0]))
            return {"log_probs": tf.nn.log_softmax(self._logits(hidden))}  # (B, T, V)

        def score(ids, lengths):
            mask = tf.sequence_mask(lengths, tf.shape(ids)[1])  # (B, T)
            hidden, _ = self._sequence(ids, mask, self._zeros(tf.shape(ids)[0]))
            return loglik(self._logits(hidden[:, :-1]), ids, lengths)

        def init_state(batch_size):
            return dict(zip(self.state_names, self._zeros(batch_size)))

        def step(ids, *state):
            x = tf.gather(self.embedding, ids)  # (B, E)
            out = []
            for i in range(self.num_layers):
                h, c = self._cell(i, tf.matmul(x, self.kernels[i]) + self.biases[i], state[2 * i], state[2 * i + 1])
                out += [h, c]
                x = h
            result = dict(zip(self.state_names, out))
            result["log_probs"] = tf.nn.log_softmax(self._logits(self._project(x)))  # (B, V)
            return result

        def prefill(ids, mask):
            """Run prompts (left-padded, mask False at padding) -> log_probs at the last position + state."""
            hidden, final = self._sequence(ids, mask, self._zeros(tf.shape(ids)[0]))
            out = dict(zip(self.state_names, final))
            out["log_probs"] = tf.nn.log_softmax(self._logits(hidden[:, -1]))  # (B, V)
            return out

        def score_batch(inputs, labels, mask, *state):
            """lmcli eval's statistics (LanguageModel.score's maths, `token_scores`) with a carried state."""
            hidden, final = self._sequence(inputs, mask > 0, list(state))
            out = dict(zip(self.state_names, final))
            out.update(token_scores(self._logits(hidden), labels, mask))  # nll, top1, top5: (B, T)
            return out

        functions = {"log_probs": log_probs, "score": score, "init_state": init_state, "step": step}
        assert set(functions) == set(SIGNATURES), "a signature of the table has no function here"
        for name, fn in functions.items():
            setattr(self, name, tf.function(fn, input_signature=input_specs(name, self.state_names, self.hidden)))
        self.prefill = tf.function(prefill, input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids"),
                                                             tf.TensorSpec([None, None], tf.bool, name="mask")])
        self.score_batch = tf.function(score_batch, input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="inputs"), tf.TensorSpec([None, None], tf.int32, name="labels"),
            tf.TensorSpec([None, None], tf.float32, name="mask"), *state_specs])

    def signatures(self) -> dict:
        return {"serving_default": getattr(self, DEFAULT), **{name: getattr(self, name) for name in SIGNATURES}}
