"""The two stability reprojections of NAIS-Net, as functions and constraints.

A NAIS-Net block updates its state with

    x(k+1) = x(k) + h * act(A x(k) + B u + b)

and is stable when the state matrix `A` (dense block) or the state kernel `C`
(convolutional block) lies in a set derived from the step Jacobian
`I + h * diag(act') * A`. The functions here map any weights into that set
with a cheap rescaling, and the constraints wrap them so that Keras applies
them after every optimizer step (projected gradient descent).

Dense block: `A = -(R^T R + epsilon I)`. The projection rescales `R` so that
`||R^T R||_F <= 1 - 2 epsilon`; then every eigenvalue of `I + A` lies in
`[epsilon, 1 - epsilon]`.

Convolutional block: per output channel `c`, with `centre_c` the centre tap
of the `c -> c` filter and `r_c` the sum of the absolute values of all other
taps of output channel `c`, the projection enforces

    |1 + centre_c| <= 1 - eta   and   |1 + centre_c| + r_c <= 1 - epsilon,

which, by Gershgorin's circle theorem, keeps every eigenvalue of the step
Jacobian strictly inside the unit disc for `0 < h <= 1` and activation slopes
in `(0, 1]`.
"""

import functools

import keras
import numpy as np
from keras import ops


def _check_epsilon(epsilon):
    if not 0.0 < float(epsilon) < 0.5:
        raise ValueError(
            "`epsilon` must be in the open interval (0, 0.5). "
            f"Received: epsilon={epsilon}"
        )
    return float(epsilon)


def _check_eta(eta, epsilon):
    if not float(epsilon) < float(eta) < 1.0:
        raise ValueError(
            "`eta` must be in the open interval (epsilon, 1) = "
            f"({epsilon}, 1). Received: eta={eta}"
        )
    return float(eta)


def _scaled_gram_norm(factor):
    factor = ops.convert_to_tensor(factor)
    # Dividing by the largest entry keeps R^T R finite for any finite R.
    scale = ops.max(ops.abs(factor))
    scale = ops.where(scale > 0, scale, ops.ones_like(scale))
    scaled = factor / scale
    gram = ops.matmul(ops.transpose(scaled), scaled)
    return ops.sqrt(ops.sum(ops.square(gram))), scale


def gram_frobenius_norm(factor):
    """Returns `||R^T R||_F` for a square or rectangular factor `R`.

    Args:
        factor: tensor of shape `(rows, units)`.

    Returns:
        A scalar tensor in the dtype of `factor` (`inf` if the norm itself
        overflows that dtype).
    """
    norm, scale = _scaled_gram_norm(factor)
    return norm * ops.square(scale)


def project_dense_state(factor, epsilon=0.01):
    """Reprojects the state factor `R` of a dense block into the stable set.

    If `||R^T R||_F > 1 - 2 epsilon`, `R` is multiplied by
    `sqrt((1 - 2 epsilon) / ||R^T R||_F)`, which makes the norm equal to
    `1 - 2 epsilon`; otherwise `R` is returned unchanged. The map is
    differentiable almost everywhere, so it also serves as a
    reparametrization inside `call`.

    Args:
        factor: tensor `R` of shape `(units, units)`.
        epsilon: float in `(0, 0.5)`, the stability margin.

    Returns:
        The projected factor, same shape and dtype.

    Example:

    >>> import numpy as np
    >>> r = project_dense_state(np.eye(4, dtype="float32") * 3.0, 0.01)
    >>> r = np.asarray(r)
    >>> round(float(np.linalg.norm(r.T @ r)), 4)
    0.98
    """
    epsilon = _check_epsilon(epsilon)
    delta = 1.0 - 2.0 * epsilon
    factor = ops.convert_to_tensor(factor)
    norm, scale = _scaled_gram_norm(factor)
    # A nonzero factor scaled to a largest entry of 1 has a Gram norm of at
    # least 1, so the floor only guards R = 0 (and its gradient).
    norm = ops.maximum(norm, 1.0)
    # ||R^T R||_F = norm * scale**2. The square root makes the Gram matrix,
    # not the factor, land on delta; the minimum leaves stable R untouched.
    shrink = ops.minimum(ops.sqrt(delta / norm) / scale, 1.0)
    return factor * ops.cast(shrink, factor.dtype)


def centre_tap_mask(kernel_size, filters, dtype="float32"):
    """Returns the 0/1 mask of the centre taps `C[kh//2, kw//2, c, c]`.

    Args:
        kernel_size: tuple `(kh, kw)` of odd integers.
        filters: number of state channels.
        dtype: dtype of the mask.

    Returns:
        A tensor of shape `(kh, kw, filters, filters)`.
    """
    kh, kw = kernel_size
    mask, _ = _centre_tap_masks(kh, kw, filters, "float32")
    return ops.cast(ops.convert_to_tensor(mask), dtype)


@functools.lru_cache(maxsize=32)
def _centre_tap_masks(kh, kw, filters, dtype):
    """The centre-tap mask (boolean) and its complement (`dtype`), cached.

    NumPy constants, so that caching them is safe under every backend's
    tracing.
    """
    mask = np.zeros((kh, kw, filters, filters), dtype=bool)
    mask[kh // 2, kw // 2] = np.eye(filters, dtype=bool)
    return mask, np.logical_not(mask).astype(dtype)


def conv_state_margins(kernel, epsilon=0.01, eta=0.1):
    """Splits a state kernel into the quantities of the conv condition.

    Args:
        kernel: tensor `C` of shape `(kh, kw, filters, filters)`.
        epsilon: stability margin.
        eta: margin that keeps the centre tap away from 0 and -2.

    Returns:
        A dict of per-output-channel tensors of shape `(filters,)`:
        `centre` (the centre taps), `off_centre_sum` (`r_c`) and
        `gershgorin` (`|1 + centre_c| + r_c`, which must be at most
        `1 - epsilon`).
    """
    kernel = ops.convert_to_tensor(kernel)
    kh, kw, _, filters = kernel.shape
    mask = centre_tap_mask((kh, kw), filters, kernel.dtype)
    centre = ops.sum(kernel * mask, axis=(0, 1, 2))
    off_centre_sum = ops.sum(ops.abs(kernel * (1.0 - mask)), axis=(0, 1, 2))
    return {
        "centre": centre,
        "off_centre_sum": off_centre_sum,
        "gershgorin": ops.abs(1.0 + centre) + off_centre_sum,
    }


def project_conv_state(kernel, epsilon=0.01, eta=0.1):
    """Reprojects the state kernel `C` of a convolutional block.

    Per output channel `c`: the centre tap is clipped so that
    `delta_c = -1 - centre_c` lies in `[-1 + eta, 1 - eta]`, then, if the
    other taps of the channel have an absolute sum `r_c` above the budget
    `1 - epsilon - |delta_c|`, they are scaled down to exactly that budget.

    Args:
        kernel: tensor `C` of shape `(kh, kw, filters, filters)` with odd
            `kh` and `kw` (Keras layout: `(kh, kw, in, out)`).
        epsilon: float in `(0, 0.5)`, the stability margin.
        eta: float in `(epsilon, 1)`: the centre tap stays in
            `[-2 + eta, -eta]`, which leaves every channel an off-centre
            budget of at least `eta - epsilon`.

    Returns:
        The projected kernel, same shape and dtype.

    Example:

    >>> import numpy as np
    >>> c = np.random.default_rng(0).normal(size=(3, 3, 2, 2))
    >>> c = np.asarray(project_conv_state(c.astype("float32")))
    >>> m = conv_state_margins(c)
    >>> bool(np.all(np.asarray(m["gershgorin"]) <= 0.99 + 1e-6))
    True
    """
    epsilon = _check_epsilon(epsilon)
    eta = _check_eta(eta, epsilon)
    kernel = ops.convert_to_tensor(kernel)
    kh, kw, filters_in, filters = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0 or filters_in != filters:
        raise ValueError(
            "A state kernel must have odd spatial size and as many input as "
            f"output channels. Received: kernel.shape={tuple(kernel.shape)}"
        )
    # Runs after every optimizer step (and in every forward pass with
    # reparametrization), so it uses few operations: the centre taps are a
    # diagonal slice, the masks are cached constants, and `where` writes the
    # new centre taps exactly.
    dtype = keras.backend.standardize_dtype(kernel.dtype)
    mask, off_mask = _centre_tap_masks(kh, kw, filters, dtype)
    mask = ops.convert_to_tensor(mask)
    off_mask = ops.convert_to_tensor(off_mask)
    centre = ops.diagonal(kernel[kh // 2, kw // 2])
    r = ops.sum(ops.abs(kernel) * off_mask, axis=(0, 1, 2))
    # `delta = -1 - centre` in `[-1 + eta, 1 - eta]`, clipped on the
    # centre itself (two operations fewer).
    centre = ops.clip(centre, -2.0 + eta, -eta)
    budget = (1.0 - epsilon) - ops.abs(1.0 + centre)
    # Equal to 1 when the taps are already inside the budget.
    scale = budget / ops.maximum(r, budget)
    return ops.where(mask, centre, kernel * scale)


@keras.saving.register_keras_serializable(package="keras_naisnet")
class DenseStateProjection(keras.constraints.Constraint):
    """Keeps the state factor `R` of a dense NAIS block in the stable set.

    Applies `project_dense_state` after each optimizer step.

    Args:
        epsilon: float in `(0, 0.5)`, the stability margin.

    Example:

    >>> layer = keras.layers.Dense(
    ...     4, kernel_constraint=DenseStateProjection(0.01))
    """

    def __init__(self, epsilon=0.01):
        self.epsilon = _check_epsilon(epsilon)

    def __call__(self, w):
        return project_dense_state(w, self.epsilon)

    def get_config(self):
        return {"epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="keras_naisnet")
class ConvStateProjection(keras.constraints.Constraint):
    """Keeps the state kernel `C` of a conv NAIS block in the stable set.

    Applies `project_conv_state` after each optimizer step.

    Args:
        epsilon: float in `(0, 0.5)`, the stability margin.
        eta: float in `(epsilon, 1)`, the centre-tap margin.

    Example:

    >>> constraint = ConvStateProjection(epsilon=0.01, eta=0.1)
    """

    def __init__(self, epsilon=0.01, eta=0.1):
        self.epsilon = _check_epsilon(epsilon)
        self.eta = _check_eta(eta, self.epsilon)

    def __call__(self, w):
        return project_conv_state(w, self.epsilon, self.eta)

    def get_config(self):
        return {"epsilon": self.epsilon, "eta": self.eta}
