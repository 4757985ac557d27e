"""LSTM: Keras' LSTM layer with a time loop whose gradient keeps the weight gradients out of the loop.

Keras' generic (non-cuDNN) loop runs the whole cell per time step, so its gradient loop adds an [E, 4H]
kernel gradient and an [H, 4H] recurrent one into accumulators at every time step: a fixed cost per step and per
replica, whatever the batch. Under mirrored on devices that share the host's cores each replica pays it for half
the batch (an LSTM alone, E = H = 512, batch 32 x 35, one intra-op thread, two logical CPU devices: 0.61-0.65 x
one device's tokens/s) and holds up to 32 of them in flight.

`sequence` computes the same cell (Keras' gate order i, f, c, o; sigmoid gates, tanh cell, z = x K + h R + b),
the way cuDNN does:
- forward: x K + b for every time step in one matmul before the loop; the loop does h R and the gates, and keeps
  the gates, h and c;
- backward (`tf.custom_gradient`): the loop computes each step's dz [B, 4H] and passes dh = dz R^T back; the
  weight gradients are three matmuls over all time steps after it (dK = X^T dZ, dR = H_prev^T dZ, db = sum dZ).
Same LSTM alone: 1.01-1.06 x one device's tokens/s on two replicas, and the same speed on one device.

Masks follow Keras (`zero_output_for_mask=False`): on a masked step the state is carried unchanged and the output
is the previous output, zeros before the first real step.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="lmcli")
class LSTM(keras.layers.LSTM):
    """keras.layers.LSTM (same weights, same checkpoints, same maths) whose loop off the GPU is `sequence`.

    On a GPU Keras' own choice stays (the cuDNN kernel, which has no per-step weight gradient either); a layer
    configuration `sequence` does not compute (dropout inside the layer, other activations, no bias, reversed,
    unrolled, zero outputs on masked steps) also falls back to Keras' loop."""

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not self._own_loop():
            return super().inner_loop(sequences, initial_state, mask=mask, training=training)
        h0, c0 = initial_state
        outputs, h, c = sequence(sequences, self.cell.kernel, self.cell.recurrent_kernel, self.cell.bias, h0, c0,
                                 mask)
        return outputs[:, -1], outputs, [h, c]

    def _own_loop(self) -> bool:
        cell, acts = self.cell, keras.activations
        return (not tf.config.list_logical_devices("GPU") and cell.use_bias and not cell.dropout
                and not cell.recurrent_dropout and not self.go_backwards and not self.unroll
                and not self.zero_output_for_mask and cell.activation is acts.tanh
                and cell.recurrent_activation is acts.sigmoid)


def sequence(x: tf.Tensor, kernel, recurrent, bias, h0: tf.Tensor, c0: tf.Tensor, mask=None):
    """(outputs (B, T, H), h (B, H), c (B, H)) of an LSTM over x (B, T, E) from state (h0, c0), in x's dtype.

    kernel (E, 4H), recurrent (H, 4H), bias (4H,): variables or tensors, cast to x's dtype; mask (B, T) bool or
    None (every step real)."""
    dtype = x.dtype
    weights = [tf.cast(w, dtype) for w in (kernel, recurrent, bias)]
    real = None if mask is None else tf.cast(tf.transpose(mask)[:, :, None], dtype)  # (T, B, 1)
    carried, h, c = _loop(tf.transpose(x, [1, 0, 2]), *weights, tf.cast(h0, dtype), tf.cast(c0, dtype),
                          real)  # carried: (T, B, H), the state h after each step
    if real is not None:  # Keras' masked output: the last real step's h, zeros before the first one
        carried *= tf.cast(tf.math.cumsum(real, axis=0) > 0, dtype)
    return tf.transpose(carried, [1, 0, 2]), h, c


def _loop(x, kernel, recurrent, bias, h0, c0, real):
    """x (T, B, E) time major; real (T, B, 1) 1/0 or None. (h per step (T, B, H), last h, last c)."""

    @tf.custom_gradient
    def run(x, kernel, recurrent, bias, h0, c0):
        steps = tf.shape(x)[0]
        xz = tf.einsum("tbe,eg->tbg", x, kernel) + bias  # (T, B, 4H): every step's input part at once
        hs, cs, gates = _forward(xz, recurrent, h0, c0, real, steps)

        def grad(d_hs, d_h, d_c):
            d_h = tf.zeros_like(h0) if d_h is None else d_h
            d_c = tf.zeros_like(c0) if d_c is None else d_c
            d_hs = tf.zeros_like(hs) if d_hs is None else d_hs
            h_prev = tf.concat([h0[None], hs[:-1]], 0)  # (T, B, H)
            c_prev = tf.concat([c0[None], cs[:-1]], 0)
            dz, dh0, dc0 = _backward(d_hs, d_h, d_c, gates, cs, c_prev, recurrent, real, steps)  # dz (T, B, 4H)
            d_kernel = tf.einsum("tbe,tbg->eg", x, dz)
            d_recurrent = tf.einsum("tbh,tbg->hg", h_prev, dz)
            d_bias = tf.reduce_sum(dz, [0, 1])
            d_x = tf.einsum("tbg,eg->tbe", dz, kernel)
            return d_x, d_kernel, d_recurrent, d_bias, dh0, dc0

        return (hs, hs[-1], cs[-1]), grad

    return run(x, kernel, recurrent, bias, h0, c0)


def _forward(xz, recurrent, h0, c0, real, steps):
    """The time loop: (carried h (T, B, H), carried c (T, B, H), gates i, f, g, o after activation (T, B, 4H))."""

    def body(t, h, c, hs, cs, gates):
        i, f, g, o = tf.split(xz[t] + tf.matmul(h, recurrent), 4, axis=1)  # (B, H) each
        i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
        c_new = f * c + i * g
        h_new = o * tf.tanh(c_new)
        if real is not None:  # a masked step carries the state
            h_new = h + real[t] * (h_new - h)
            c_new = c + real[t] * (c_new - c)
        return t + 1, h_new, c_new, hs.write(t, h_new), cs.write(t, c_new), gates.write(t, tf.concat([i, f, g, o], 1))

    arrays = [tf.TensorArray(xz.dtype, size=steps) for _ in range(3)]
    _, _, _, hs, cs, gates = tf.while_loop(lambda t, *_: t < steps, body, [0, h0, c0, *arrays])
    return hs.stack(), cs.stack(), gates.stack()


def _backward(d_hs, d_h, d_c, gates, cs, c_prev, recurrent, real, steps):
    """The gradient loop, last step first: (dz (T, B, 4H), d h0, d c0). d_hs: the outputs' gradient (T, B, H);
    d_h, d_c: the last state's."""

    def body(t, dh, dc, dzs):
        i, f, g, o = tf.split(gates[t], 4, axis=1)  # (B, H) each
        dh = dh + d_hs[t]
        dh_new, dc_new = (dh, dc) if real is None else (real[t] * dh, real[t] * dc)  # to this step's cell
        tanh_c = tf.tanh(cs[t])  # cs[t] is this step's new c wherever the step is real
        dc_new = dc_new + dh_new * o * (1 - tanh_c * tanh_c)
        dz = tf.concat([dc_new * g * i * (1 - i), dc_new * c_prev[t] * f * (1 - f), dc_new * i * (1 - g * g),
                        dh_new * tanh_c * o * (1 - o)], 1)  # (B, 4H)
        dh_prev = tf.matmul(dz, recurrent, transpose_b=True)
        dc_prev = dc_new * f
        if real is not None:  # a masked step passed the state through
            dh_prev += (1 - real[t]) * dh
            dc_prev += (1 - real[t]) * dc
        return t - 1, dh_prev, dc_prev, dzs.write(t, dz)

    dzs = tf.TensorArray(gates.dtype, size=steps)
    _, dh0, dc0, dzs = tf.while_loop(lambda t, *_: t >= 0, body, [steps - 1, d_h, d_c, dzs])
    return dzs.stack(), dh0, dc0
