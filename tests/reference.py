"""Float64 numpy references for the NAIS blocks, shared by the tests.

These re-derive the block maths from the equations, independently of
`keras.ops`: the recurrences, a direct "same"-padded convolution, and the
explicit matrix of a stride-1 convolution.
"""

import numpy as np

ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
}


def dense_state_matrix(factor, epsilon):
    """`A = -(R^T R + epsilon I)` in float64."""
    factor = np.asarray(factor, np.float64)
    return -(factor.T @ factor + epsilon * np.eye(factor.shape[1]))


def dense_recurrence(
    u,
    factor,
    input_kernel,
    bias,
    num_steps,
    step_size,
    epsilon,
    activation="tanh",
    x0=None,
):
    """Runs `x <- x + h act(x A + u B + b)` in float64; returns x(K)."""
    act = ACTIVATIONS[activation]
    a = dense_state_matrix(factor, epsilon)
    u = np.asarray(u, np.float64)
    input_term = u @ np.asarray(input_kernel, np.float64)
    if bias is not None:
        input_term = input_term + np.asarray(bias, np.float64)
    x = np.zeros_like(input_term) if x0 is None else np.array(x0, np.float64)
    for _ in range(num_steps):
        x = x + step_size * act(x @ a + input_term)
    return x


def conv2d_same(x, kernel, stride=1):
    """Direct 2-D convolution, channels last, "same" zero padding.

    The padding follows the TensorFlow rule that Keras uses on every
    backend: `pad_total = max((out - 1) * stride + k - size, 0)`, with the
    smaller half before.
    """
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    batch, height, width, _ = x.shape
    kh, kw, _, out_channels = kernel.shape

    def pads(size, k):
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        return out, total // 2, total - total // 2

    out_h, top, bottom = pads(height, kh)
    out_w, left, right = pads(width, kw)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out = np.zeros((batch, out_h, out_w, out_channels))
    for dy in range(kh):
        for dx in range(kw):
            patch = padded[
                :,
                dy : dy + (out_h - 1) * stride + 1 : stride,
                dx : dx + (out_w - 1) * stride + 1 : stride,
                :,
            ]
            out += patch @ kernel[dy, dx]
    return out


def conv_recurrence(
    u,
    state_kernel,
    input_kernel,
    bias,
    num_steps,
    step_size,
    stride=1,
    activation="tanh",
    x0=None,
):
    """Runs `X <- X + h act(conv(X, C) + conv(U, D) + E)`; returns X(K)."""
    act = ACTIVATIONS[activation]
    input_term = conv2d_same(u, input_kernel, stride)
    if bias is not None:
        input_term = input_term + np.asarray(bias, np.float64)
    x = np.zeros_like(input_term) if x0 is None else np.array(x0, np.float64)
    for _ in range(num_steps):
        x = x + step_size * act(conv2d_same(x, state_kernel) + input_term)
    return x


def conv_matrix(state_kernel, height, width):
    """The matrix of `X -> conv(X, C)` (stride 1, zero padding).

    Rows and columns index `(pixel, channel)` in row-major order of a
    `(height, width, channels)` state.
    """
    channels = state_kernel.shape[-1]
    size = height * width * channels
    basis = np.eye(size).reshape(size, height, width, channels)
    # Column j is the image of the j-th basis vector.
    return conv2d_same(basis, state_kernel).reshape(size, size).T
