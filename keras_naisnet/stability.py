"""Diagnostics of NAIS blocks: checks, Jacobians, trajectories, depth.

What the stability theory of NAIS-Net promises can be measured on a
trained model with the functions here:

- `check(model)`: for every NAIS block, the margin to each stability
  condition of its weights, as a printable report.
- `step_jacobian_spectral_radius(block, inputs, state)`: the spectral
  radius of the step Jacobian `d x(k+1) / d x(k)` at given inputs and
  states, and `step_jacobian_norm` for its spectral norm.
- `trajectory(block, inputs)`: the states `x(0), ..., x(K)` of a block.
- `lipschitz_bound(block)`: a bound on how much the final state of a block
  can move when its input moves, that does not grow with the depth `K`.
- `with_unroll(model, ...)`: a copy of a model whose blocks unroll to
  another depth, or adaptively, optionally returning the steps taken.
- `nais_blocks(model)`: every NAIS block inside a model or layer.

These are host-side diagnostics: they return NumPy arrays and Python
numbers, and do their small linear algebra in float64 NumPy. The block's
own maths (state and input terms, activation slopes) runs through
`keras.ops` and the backend's automatic differentiation, so every function
works on TensorFlow, JAX and PyTorch.
"""

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from keras_naisnet import constraints
from keras_naisnet.base_block import BaseNaisBlock
from keras_naisnet.base_block import _check_positive_int
from keras_naisnet.conv_block import NaisConvBlock
from keras_naisnet.dense_block import NaisDenseBlock

# ---------------------------------------------------------------------------
# Finding the blocks.


def nais_blocks(model_or_layer):
    """Returns every NAIS block in a model or layer, depth first.

    Nested models and layers that hold sub-layers are searched
    recursively; a block used twice is listed once.

    Args:
        model_or_layer: a `keras.layers.Layer` (a model is a layer).

    Returns:
        A list of `NaisDenseBlock` and `NaisConvBlock` instances.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), NaisDenseBlock(4)])
    >>> [type(b).__name__ for b in nais_blocks(model)]
    ['NaisDenseBlock']
    """
    found = []
    seen = set()

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, BaseNaisBlock):
            found.append(layer)
        # Keras tracks the sub-layers of any layer (models included) in
        # `_layers`; there is no public recursive accessor.
        for sub in getattr(layer, "_layers", []):
            visit(sub)

    if not isinstance(model_or_layer, keras.layers.Layer):
        raise ValueError(
            "Expected a Keras model or layer. Received: "
            f"model_or_layer={model_or_layer!r}"
        )
    visit(model_or_layer)
    return found


def _check_block(block):
    if not isinstance(block, BaseNaisBlock):
        raise ValueError(
            "Expected a NaisDenseBlock or NaisConvBlock. Received: "
            f"block={block!r}"
        )
    if not block.built:
        raise ValueError(
            f"Block '{block.name}' is not built: call it on an input (or "
            "build its model) first."
        )


def _to_numpy64(tensor):
    return np.asarray(ops.convert_to_numpy(tensor), dtype=np.float64)


# ---------------------------------------------------------------------------
# The stability check.


@dataclasses.dataclass
class Condition:
    """One stability condition of one block and how far it is from failing.

    Attributes:
        name: what is compared, e.g. `"||R^T R||_F <= 1 - 2 eps"`.
        value: the measured quantity.
        bound: the bound it must respect.
        margin: distance to the bound, positive when the condition holds
            (`bound - value` for an upper bound, `value - bound` for a
            lower one).
        passed: whether `margin >= -atol` (see `check`).
        detail: extra information, e.g. the worst channel.
    """

    name: str
    value: float
    bound: float
    margin: float
    passed: bool
    detail: str = ""


@dataclasses.dataclass
class BlockReport:
    """The stability conditions of one NAIS block.

    Attributes:
        name: the block's name.
        kind: `"dense"` or `"conv"`.
        stability: the block's stability mode (`"projection"`,
            `"reparametrization"` or `None`).
        conditions: a list of `Condition`.
    """

    name: str
    kind: str
    stability: object
    conditions: list

    @property
    def constrained(self):
        """False for `stability=None`: nothing keeps the weights stable."""
        return self.stability is not None

    @property
    def passed(self):
        """Whether the current weights meet every condition."""
        return all(c.passed for c in self.conditions)


class StabilityReport:
    """The result of `check`: one `BlockReport` per NAIS block.

    `report.passed` is true when every block's current weights meet every
    condition. `str(report)` is a plain-text table and `to_markdown()` a
    markdown table, one row per condition. Unconstrained blocks
    (`stability=None`) are marked "none (unconstrained)": their margins are
    measured like the others, but nothing keeps them positive in training.

    Attributes:
        blocks: the list of `BlockReport`.
    """

    columns = (
        "block",
        "type",
        "stability",
        "condition",
        "value",
        "bound",
        "margin",
        "status",
    )

    def __init__(self, blocks):
        self.blocks = list(blocks)

    @property
    def passed(self):
        """Whether every block passes (true for a model with no block)."""
        return all(block.passed for block in self.blocks)

    @property
    def failures(self):
        """The `(block name, Condition)` pairs that fail."""
        return [
            (block.name, condition)
            for block in self.blocks
            for condition in block.conditions
            if not condition.passed
        ]

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self):
        return len(self.blocks)

    def rows(self):
        """The table as a list of tuples of strings, one per condition."""
        rows = []
        for block in self.blocks:
            mode = (
                block.stability if block.constrained else "none (unconstrained)"
            )
            for condition in block.conditions:
                status = "pass" if condition.passed else "FAIL"
                if condition.detail:
                    status += f" ({condition.detail})"
                rows.append(
                    (
                        block.name,
                        block.kind,
                        str(mode),
                        condition.name,
                        f"{condition.value:.6g}",
                        f"{condition.bound:.6g}",
                        f"{condition.margin:+.3g}",
                        status,
                    )
                )
        return rows

    def _verdict(self):
        if not self.blocks:
            return "No NAIS block found."
        failed = sum(not block.passed for block in self.blocks)
        if failed == 0:
            return f"All {len(self.blocks)} NAIS blocks pass."
        return f"{failed} of {len(self.blocks)} NAIS blocks FAIL."

    def __str__(self):
        rows = [self.columns] + self.rows()
        widths = [max(len(row[i]) for row in rows) for i in range(8)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths))
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines + [self._verdict()])

    def __repr__(self):
        return (
            f"<StabilityReport blocks={len(self.blocks)} passed={self.passed}>"
        )

    def to_markdown(self):
        """Returns the report as a markdown table followed by the verdict."""
        lines = [
            "| " + " | ".join(self.columns) + " |",
            "|" + " --- |" * len(self.columns),
        ]
        for row in self.rows():
            cells = [cell.replace("|", "\\|") for cell in row]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines + ["", self._verdict()])


def _upper(name, value, bound, atol, detail=""):
    margin = bound - value
    return Condition(name, value, bound, margin, bool(margin >= -atol), detail)


def _lower(name, value, bound, atol, detail=""):
    margin = value - bound
    return Condition(name, value, bound, margin, bool(margin >= -atol), detail)


def _effective_dense_factor(block):
    factor = ops.convert_to_tensor(block.state_factor)
    if block.stability == "reparametrization":
        factor = constraints.project_dense_state(factor, block.epsilon)
    return factor


def _dense_conditions(block, atol):
    eps = block.epsilon
    norm = float(
        _to_numpy64(
            constraints.gram_frobenius_norm(_effective_dense_factor(block))
        )
    )
    # I + A is symmetric: A = -(R^T R + eps I).
    step_matrix = np.eye(block.units) + _to_numpy64(block.state_matrix)
    eigenvalues = np.linalg.eigvalsh(step_matrix)
    return [
        _upper("||R^T R||_F <= 1 - 2 eps", norm, 1.0 - 2.0 * eps, atol),
        _lower("min eig(I + A) >= eps", eigenvalues[0], eps, atol),
        _upper("max eig(I + A) <= 1 - eps", eigenvalues[-1], 1.0 - eps, atol),
    ]


def _conv_conditions(block, atol):
    eps, eta = block.epsilon, block.eta
    margins = constraints.conv_state_margins(
        ops.convert_to_tensor(block.state_kernel), eps, eta
    )
    gershgorin = _to_numpy64(margins["gershgorin"])
    centre_gap = np.abs(1.0 + _to_numpy64(margins["centre"]))
    worst = int(np.argmax(gershgorin))
    worst_centre = int(np.argmax(centre_gap))
    return [
        _upper(
            "max_c |1 + centre_c| + r_c <= 1 - eps",
            gershgorin[worst],
            1.0 - eps,
            atol,
            f"channel {worst}",
        ),
        _upper(
            "max_c |1 + centre_c| <= 1 - eta",
            centre_gap[worst_centre],
            1.0 - eta,
            atol,
            f"channel {worst_centre}",
        ),
    ]


def check(model_or_layer, atol=1e-5):
    """Checks the stability conditions of every NAIS block in a model.

    For each block the conditions are evaluated on the weights that `call`
    uses (the projected ones for `stability="reparametrization"`):

    - dense block, with `A = -(R^T R + epsilon I)`: `||R^T R||_F` against
      `1 - 2 epsilon` (the condition the projection enforces), and the
      smallest and largest eigenvalues of `I + A` against `epsilon` and
      `1 - epsilon` (what the first condition implies);
    - conv block, per output channel `c` of the state kernel: the
      Gershgorin sum `|1 + centre_c| + r_c` against `1 - epsilon` and the
      centre-tap distance `|1 + centre_c|` against `1 - eta`; the table
      shows the worst channel's value and margin.

    The margin is positive when a condition holds. Blocks with
    `stability=None` are measured the same way and marked unconstrained.

    Args:
        model_or_layer: a model, a layer holding blocks, or a block. Every
            block must be built.
        atol: non-negative float, how far past a bound a value may be and
            still pass. The default absorbs float32 rounding: after a
            projection the constrained quantity equals its bound up to a
            few float32 ulps.

    Returns:
        A `StabilityReport`.

    Example:

    >>> block = NaisDenseBlock(4)
    >>> _ = block(np.zeros((1, 3), "float32"))
    >>> check(block).passed
    True
    """
    if not float(atol) >= 0.0:
        raise ValueError(
            f"`atol` must be a non-negative float. Received: atol={atol!r}"
        )
    reports = []
    for block in nais_blocks(model_or_layer):
        _check_block(block)
        if isinstance(block, NaisConvBlock):
            kind, conditions = "conv", _conv_conditions(block, atol)
        elif isinstance(block, NaisDenseBlock):
            kind, conditions = "dense", _dense_conditions(block, atol)
        else:
            # TODO: a check for block types added after these two.
            continue
        reports.append(
            BlockReport(block.name, kind, block.stability, conditions)
        )
    return StabilityReport(reports)


# ---------------------------------------------------------------------------
# Trajectories and the step Jacobian.


class _Step:
    """The step map of a block at fixed inputs, built from its own parts."""

    def __init__(self, block, inputs):
        _check_block(block)
        self.block = block
        self.inputs = ops.cast(
            ops.convert_to_tensor(inputs), block.compute_dtype
        )
        self.input_term = block._input_term(self.inputs)
        self.weights = block._state_weights()
        self.step_size = ops.cast(block.step_size, block.compute_dtype)

    def pre_activation(self, state):
        state = ops.cast(ops.convert_to_tensor(state), self.weights.dtype)
        return self.block._state_term(state, self.weights) + self.input_term

    def __call__(self, state):
        return self.step_size * self.block.activation(
            self.pre_activation(state)
        )

    def initial_state(self, initial_state=None):
        if initial_state is not None:
            return ops.cast(
                ops.convert_to_tensor(initial_state), self.weights.dtype
            )
        if self.block.initial_state == "input":
            return self.inputs
        return ops.zeros_like(self.input_term)


def trajectory(block, inputs, num_steps=None, initial_state=None):
    """Returns the states `x(0), x(1), ..., x(K)` of a block.

    Runs the block's fixed-depth recurrence
    `x(k+1) = x(k) + step_size * act(state_term(x(k)) + input_term(u))`
    on the given inputs and keeps every state.

    Args:
        block: a built `NaisDenseBlock` or `NaisConvBlock`.
        inputs: block inputs `u`, shape `(batch, ...)`.
        num_steps: number of steps `K` (default: `block.num_steps`).
        initial_state: optional `x(0)`; default is the block's
            `initial_state` policy (zeros, or the input).

    Returns:
        A NumPy array of shape `(batch, K + 1, *state_shape)`; entry
        `[:, k]` is `x(k)`, and `[:, K]` equals the block's fixed-depth
        output.

    Example:

    >>> block = NaisDenseBlock(4, num_steps=5)
    >>> u = np.ones((2, 3), "float32")
    >>> _ = block(u)
    >>> trajectory(block, u).shape
    (2, 6, 4)
    """
    step = _Step(block, inputs)
    num_steps = _check_positive_int(
        "num_steps", block.num_steps if num_steps is None else num_steps
    )
    state = step.initial_state(initial_state)
    states = [ops.convert_to_numpy(state)]
    for _ in range(num_steps):
        state = state + step(state)
        states.append(ops.convert_to_numpy(state))
    return np.stack(states, axis=1)


def _activation_slopes(activation, z):
    """Elementwise derivative `act'(z)` by the backend's autodiff.

    The gradient of `sum(act(z))` is `act'(z)` because the activation acts
    elementwise.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(z)
            total = tf.reduce_sum(activation(z))
        return tape.gradient(total, z)
    if backend == "jax":
        import jax

        return jax.grad(lambda t: jax.numpy.sum(activation(t)))(z)
    if backend == "torch":
        import torch

        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            (slopes,) = torch.autograd.grad(activation(leaf).sum(), leaf)
        return slopes
    raise NotImplementedError(
        "The step Jacobian needs automatic differentiation: use the "
        f"tensorflow, jax or torch backend. Received: backend={backend!r}"
    )


class _StepJacobian:
    """`J = I + h * diag(act'(z)) * S` as a linear map, per sample.

    `S` is the state term (a matrix product or a stride-1 convolution,
    linear in the state), `z` the pre-activation at the given state. `J`
    and its transpose are applied exactly with `keras.ops`; the slopes
    `act'(z)` come from the backend's automatic differentiation.
    """

    def __init__(self, block, inputs, state):
        step = _Step(block, inputs)
        z = step.pre_activation(state)
        self.block = block
        self.weights = step.weights
        self.step_size = step.step_size
        self.slopes = _activation_slopes(block.activation, z)
        self.state_shape = tuple(z.shape[1:])
        self.batch = int(z.shape[0])
        self.size = int(np.prod(self.state_shape))

    def _state_term_transpose(self, vectors):
        if isinstance(self.block, NaisConvBlock):
            # The adjoint of a stride-1 "same" convolution with an odd
            # kernel C of layout (kh, kw, in, out) is the transposed
            # convolution with the same kernel (layout (kh, kw, out, in)
            # for `conv_transpose`).
            return ops.conv_transpose(
                vectors, self.weights, strides=1, padding="same"
            )
        return ops.matmul(vectors, ops.transpose(self.weights))

    def apply(self, vectors, transpose=False):
        """Applies `J` (or `J^T`) of every sample to `p` vectors each.

        Args:
            vectors: NumPy array `(batch, p, size)`.
            transpose: apply `J^T` instead of `J`.

        Returns:
            A float64 NumPy array `(batch, p, size)`.
        """
        p = vectors.shape[1]
        v = ops.convert_to_tensor(
            vectors.reshape((self.batch * p,) + self.state_shape),
            self.weights.dtype,
        )
        slopes = ops.repeat(self.slopes, p, axis=0)
        if transpose:
            out = v + self.step_size * self._state_term_transpose(slopes * v)
        else:
            state_term = self.block._state_term(v, self.weights)
            out = v + self.step_size * slopes * state_term
        return _to_numpy64(out).reshape(self.batch, p, self.size)

    def explicit(self):
        """The Jacobian matrices, float64 `(batch, size, size)`."""
        matrices = np.empty((self.batch, self.size, self.size))
        identity = np.eye(self.size)
        # Column j of J is J e_j; apply to the identity in chunks of rows.
        chunk = max(1, 4096 // max(self.batch, 1))
        for start in range(0, self.size, chunk):
            basis = identity[start : start + chunk]
            basis = np.broadcast_to(basis, (self.batch,) + basis.shape)
            columns = self.apply(np.ascontiguousarray(basis))
            matrices[:, :, start : start + chunk] = np.swapaxes(columns, 1, 2)
        return matrices


def _orthonormal(vectors):
    # vectors: (batch, p, n); returns orthonormal rows spanning the same
    # subspace.
    q, _ = np.linalg.qr(np.swapaxes(vectors, 1, 2))
    return np.swapaxes(q, 1, 2)


def step_jacobian_spectral_radius(
    block,
    inputs,
    state,
    method="auto",
    num_iterations=1000,
    num_vectors=4,
    rtol=1e-5,
    seed=0,
):
    """Spectral radius of the step Jacobian `d x(k+1) / d x(k)`.

    For `x(k+1) = x(k) + h * act(z)`, `z = state_term(x(k)) + input_term`,
    the Jacobian of one step at a state `x` is the linear map

        J v = v + h * act'(z) * state_term(v),

    with the slopes `act'(z)` computed by the backend's automatic
    differentiation and `state_term` applied with `keras.ops` (it is
    linear in the state). Each sample has its own `J` (its own slopes).

    `J` is not symmetric in general (a convolution kernel is not), so its
    dominant eigenvalues can be a complex-conjugate pair, on which a
    single-vector power iteration rotates instead of converging. Two
    methods:

    - `"exact"`: build `J` explicitly (apply it to the basis vectors) and
      take the largest `|eigenvalue|` with `numpy.linalg.eigvals` in
      float64. Costs `size` Jacobian-vector products and an
      `O(size^3)` eigen-decomposition per sample.
    - `"power"`: block power iteration (orthogonal iteration) on
      `num_vectors` vectors at once, re-orthonormalized every step, with
      the eigenvalues of the `num_vectors x num_vectors` projection
      `Q^T J Q` (Rayleigh-Ritz) as estimates. A complex pair spans a
      two-dimensional invariant subspace, which the block captures, so
      the largest `|Ritz value|` converges to the spectral radius. It
      stops when the residual `||J z - lambda z||` of the unit Ritz vector
      `z` of that value is at most `rtol * |lambda|`, or after
      `num_iterations` steps. Convergence is slow when many eigenvalues
      lie close to the largest one (typical near saturation, where the
      slopes, hence the changes `h * act'(z) * state_term`, are small).
    - `"auto"`: `"exact"` when the state has at most 512 entries per
      sample, else `"power"`.

    See `step_jacobian_norm` for the spectral norm `||J||_2`, an upper
    bound on the spectral radius computed by power iteration on `J^T J`.

    Args:
        block: a built `NaisDenseBlock` or `NaisConvBlock`.
        inputs: block inputs `u`, shape `(batch, ...)`.
        state: states `x(k)`, shape `(batch, *state_shape)`.
        method: `"auto"`, `"exact"` or `"power"`.
        num_iterations: positive integer, the power-iteration budget.
        num_vectors: positive integer, the block size of the power
            iteration (at least 2 to capture a complex pair).
        rtol: relative residual below which the power iteration stops;
            Jacobian-vector products run in float32, so values much below
            `1e-6` are not reachable.
        seed: seed of the random start vectors.

    Returns:
        A float64 NumPy array of shape `(batch,)`.

    Example:

    >>> block = NaisDenseBlock(4)
    >>> u = np.ones((2, 3), "float32")
    >>> _ = block(u)
    >>> rho = step_jacobian_spectral_radius(block, u, np.zeros((2, 4)))
    >>> bool(np.all(rho < 1))
    True
    """
    if method not in ("auto", "exact", "power"):
        raise ValueError(
            "`method` must be 'auto', 'exact' or 'power'. "
            f"Received: method={method!r}"
        )
    _check_positive_int("num_iterations", num_iterations)
    _check_positive_int("num_vectors", num_vectors)
    jacobian = _StepJacobian(block, inputs, state)
    if method == "auto":
        method = "exact" if jacobian.size <= 512 else "power"
    if method == "exact":
        eigenvalues = np.linalg.eigvals(jacobian.explicit())
        return np.max(np.abs(eigenvalues), axis=-1)

    p = min(num_vectors, jacobian.size)
    rng = np.random.default_rng(seed)
    q = _orthonormal(rng.normal(size=(jacobian.batch, p, jacobian.size)))
    batch = np.arange(jacobian.batch)
    for _ in range(num_iterations):
        image = jacobian.apply(q)
        # Rayleigh-Ritz: H = Q^T J Q with orthonormal rows in q.
        projected = np.einsum("bin,bjn->bji", q, image)
        values, vectors = np.linalg.eig(projected)
        top = np.argmax(np.abs(values), axis=-1)
        estimate = np.abs(values[batch, top])
        # Residual ||J z - lambda z|| of the unit Ritz vector z = Q^T y of
        # the largest Ritz value (complex for a complex pair).
        y = vectors[batch, :, top]
        ritz = np.einsum("bi,bin->bn", y, q)
        residual = np.einsum("bi,bin->bn", y, image)
        residual -= values[batch, top][:, None] * ritz
        error = np.linalg.norm(residual, axis=-1)
        if np.all(error <= rtol * np.maximum(estimate, 1e-30)):
            break
        q = _orthonormal(image)
    return estimate


def step_jacobian_norm(
    block, inputs, state, num_iterations=1000, rtol=1e-5, seed=0
):
    """Spectral norm `||J||_2` of the step Jacobian, by power iteration.

    Iterates `v <- J^T J v / ||J^T J v||` (a symmetric positive
    semi-definite map, so the plain power iteration converges) with `J`
    and `J^T` applied as in `step_jacobian_spectral_radius`; the estimate
    `sqrt(v^T J^T J v)` (a Rayleigh quotient) approaches `||J||_2` from
    below. It stops when the residual `||J^T J v - lambda v||` is at most
    `rtol * lambda`, or after `num_iterations` steps. `||J||_2` bounds
    the spectral radius from above and also bounds how much one step can
    stretch a perturbation of the state in the Euclidean norm.

    Args:
        block: a built `NaisDenseBlock` or `NaisConvBlock`.
        inputs: block inputs `u`, shape `(batch, ...)`.
        state: states `x(k)`, shape `(batch, *state_shape)`.
        num_iterations: positive integer, the iteration budget.
        rtol: relative residual below which the iteration stops.
        seed: seed of the random start vector.

    Returns:
        A float64 NumPy array of shape `(batch,)`.

    Example:

    >>> block = NaisDenseBlock(4)
    >>> _ = block(np.ones((2, 3), "float32"))
    >>> norm = step_jacobian_norm(block, np.ones((2, 3), "float32"),
    ...                           np.zeros((2, 4), "float32"))
    >>> norm.shape
    (2,)
    """
    _check_positive_int("num_iterations", num_iterations)
    jacobian = _StepJacobian(block, inputs, state)
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(jacobian.batch, 1, jacobian.size))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    for _ in range(num_iterations):
        w = jacobian.apply(jacobian.apply(v), transpose=True)
        # Rayleigh quotient of the symmetric J^T J and its residual.
        value = np.sum(v * w, axis=-1, keepdims=True)
        estimate = np.sqrt(np.maximum(value[:, 0, 0], 0.0))
        error = np.linalg.norm(w - value * v, axis=-1)[:, 0]
        if np.all(error <= rtol * np.maximum(value[:, 0, 0], 1e-30)):
            break
        length = np.linalg.norm(w, axis=-1, keepdims=True)
        v = w / np.where(length > 0, length, 1.0)
    return estimate


# ---------------------------------------------------------------------------
# Lipschitz bound of the input-to-state map.


def lipschitz_bound(block, input_start=None):
    """Upper bound on the Lipschitz constant of `u -> x(K)`, for every `K`.

    The bound holds for the block's current weights (the effective ones in
    `"reparametrization"` mode), for every depth `K`, for a fixed start
    state (`initial_state="zeros"`, or a start tensor passed to `call`
    that does not depend on `u`) and for the start `x(0) = u`
    (`initial_state="input"`, or `call(u, initial_state=u)`).
    It uses only that the activation is non-decreasing and 1-Lipschitz
    (tanh, relu), so the secant slopes `d_i` of the activation between two
    inputs lie in `[0, 1]`. It is returned as `inf` when the weights are
    outside the range where the argument applies, and for activations the
    stability analysis does not cover.

    Dense block, Euclidean norm (`||x(K) - x'(K)||_2 <= L ||u - u'||_2`).
    With `M = R^T R + epsilon I` (symmetric positive definite, `A = -M`),
    the difference `e_k = x(k) - x'(k)` for inputs `u`, `u'` obeys
    `e_{k+1} = e_k - h D_k M (e_k - e_bar)` with `D_k = diag(d)` and
    `e_bar = M^-1 B^T (u - u')` (column-vector form). So
    `f_k = e_k - e_bar` obeys `f_{k+1} = (I - h D_k M) f_k`; in the norm
    `||v||_M = sqrt(v^T M v)` this map is
    `I - h M^1/2 D_k M^1/2`, symmetric with eigenvalues in
    `[1 - h lambda_max(M), 1]`, hence non-expansive when
    `h lambda_max(M) <= 2` (always true for a stable block, where
    `lambda_max(M) <= 1 - epsilon` and `h <= 1`). Hence
    `||e_k||_M <= ||f_0||_M + ||e_bar||_M`, and with
    `||e_bar||_M <= ||M^-1/2 B^T||_2 ||u - u'||` and
    `||e||_2 <= ||e||_M / sqrt(lambda_min(M))`:

        L = (c0 + 2 ||M^-1/2 B^T||_2) / sqrt(lambda_min(M)),

    where `c0 = 0` for a fixed start and `c0 = sqrt(lambda_max(M))` for
    `x(0) = u`.

    Conv block, max norm over pixels and channels
    (`max |x(K) - x'(K)| <= L max |u - u'|`). Write the state convolution
    as a matrix `C`. Row `i` (pixel, channel `c`) of `I + C` has absolute
    sum at most `g_c = |1 + centre_c| + r_c`, and row `i` of the input
    convolution matrix at most `s_c = sum |D[:, :, :, c]|`. From
    `e_{k+1} = (I - h D_k) e_k + h D_k ((I + C) e_k + Dmat (u - u'))`,
    with `m_c = 1 - g_c > 0` (the Gershgorin margin),
    `|e_{k+1, i}| <= (1 - h d_i m_c) ||e_k|| + h d_i s_c ||u - u'||`,
    so `||e_k|| <= max(c0, max_c s_c / m_c) ||u - u'||` by induction:

        L = max(c0, max_c s_c / m_c),

    with `c0 = 0` for a fixed start, `1` for `x(0) = u`; `inf` when some
    `m_c <= 0`.

    Neither bound contains `K`: the stable block does not amplify input
    perturbations more when it is unrolled deeper. Both are worst-case
    bounds: they hold for every pair of inputs, and typical ratios are
    smaller.

    Args:
        block: a built `NaisDenseBlock` or `NaisConvBlock`.
        input_start: whether the state starts from the block input,
            `x(0) = u`. `None` follows the block's `initial_state`
            argument; pass `True` for a block called as
            `block(u, initial_state=u)`.

    Returns:
        A Python float (`inf` when no bound applies).

    Example:

    >>> block = NaisDenseBlock(4)
    >>> _ = block(np.ones((1, 3), "float32"))
    >>> math.isfinite(lipschitz_bound(block))
    True
    """
    _check_block(block)
    from keras_naisnet.base_block import COVERED_ACTIVATIONS

    if not any(block.activation is fn for fn in COVERED_ACTIVATIONS.values()):
        return math.inf
    if input_start is None:
        input_start = block.initial_state == "input"
    input_kernel = _to_numpy64(block.input_kernel)
    if isinstance(block, NaisConvBlock):
        margins = constraints.conv_state_margins(
            ops.convert_to_tensor(block.state_kernel),
            block.epsilon,
            block.eta,
        )
        margin = 1.0 - _to_numpy64(margins["gershgorin"])
        if np.any(margin <= 0.0):
            return math.inf
        input_sums = np.sum(np.abs(input_kernel), axis=(0, 1, 2))
        return float(
            max(1.0 if input_start else 0.0, np.max(input_sums / margin))
        )
    m = -_to_numpy64(block.state_matrix)
    m = 0.5 * (m + m.T)
    eigenvalues, eigenvectors = np.linalg.eigh(m)
    if eigenvalues[0] <= 0.0 or block.step_size * eigenvalues[-1] > 2.0:
        return math.inf
    inverse_root = (eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T
    # Row-vector layout: the input term is u B, i.e. B^T u in column form.
    gain = np.linalg.norm(inverse_root @ input_kernel.T, ord=2)
    start = np.sqrt(eigenvalues[-1]) if input_start else 0.0
    return float((start + 2.0 * gain) / np.sqrt(eigenvalues[0]))


# ---------------------------------------------------------------------------
# Another unroll depth.


def _patch_block_configs(config, settings):
    """Applies `settings` to every serialized NAIS block inside a config."""
    if isinstance(config, dict):
        name = config.get("registered_name") or config.get("class_name")
        patched = {
            k: _patch_block_configs(v, settings) for k, v in config.items()
        }
        if (
            isinstance(name, str)
            and name.split(">")[-1] in ("NaisDenseBlock", "NaisConvBlock")
            and isinstance(patched.get("config"), dict)
        ):
            patched["config"] = settings(patched["config"], nested=True)
        return patched
    if isinstance(config, list):
        return [_patch_block_configs(item, settings) for item in config]
    return config


def with_unroll(
    model, num_steps=None, tol=None, max_steps=None, return_steps=False
):
    """Returns a copy of a model whose NAIS blocks unroll differently.

    Every NAIS block of the copy, including blocks nested in sub-models or
    in custom layers that serialize their sub-layers, gets the given
    settings; every other layer is copied unchanged, and all weights are
    copied. The original model is not modified.

    Args:
        model: a Functional or Sequential Keras model (built).
        num_steps: positive integer, the fixed depth `K` of every block;
            `None` keeps each block's own `num_steps`.
        tol: `None` (fixed depth) or a non-negative float: adaptive depth
            at inference, as the blocks' `tol` argument.
        max_steps: positive integer, the largest adaptive depth; `None`
            means each block's (new) `num_steps`.
        return_steps: if `True`, the copy returns `(outputs, steps)`, where
            `steps` is an int32 tensor of shape `(batch, num_calls)` with
            the steps each sample took in each NAIS block call of the
            model's own graph, in call order (the names of the blocks are
            in `copy.step_block_names`). Blocks nested inside sub-models
            or custom layers cannot report steps this way; they raise a
            `ValueError` with `return_steps=True`.

    Returns:
        A new Keras model.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), NaisDenseBlock(4)])
    >>> deeper = with_unroll(model, num_steps=30)
    >>> [b.num_steps for b in nais_blocks(deeper)]
    [30]
    """
    if num_steps is not None:
        _check_positive_int("num_steps", num_steps)
    if max_steps is not None:
        _check_positive_int("max_steps", max_steps)
    if tol is not None and not float(tol) >= 0.0:
        raise ValueError(
            f"`tol` must be None or a non-negative float. Received: tol={tol!r}"
        )
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(
            "`with_unroll` needs a built Functional or Sequential model. "
            f"Received: model={model!r}"
        )

    def settings(config, nested=False):
        config = dict(config)
        if num_steps is not None:
            config["num_steps"] = num_steps
        config["tol"] = None if tol is None else float(tol)
        config["max_steps"] = (
            config["num_steps"] if max_steps is None else max_steps
        )
        config["return_steps"] = bool(return_steps) and not nested
        return config

    nested_blocks = []

    def clone_function(layer):
        if isinstance(layer, BaseNaisBlock):
            return layer.__class__.from_config(settings(layer.get_config()))
        found = [b for b in nais_blocks(layer) if b is not layer]
        if not found:
            return layer.__class__.from_config(layer.get_config())
        nested_blocks.extend(found)
        serialized = keras.saving.serialize_keras_object(layer)
        return keras.saving.deserialize_keras_object(
            _patch_block_configs(serialized, settings)
        )

    if not return_steps:
        clone = keras.models.clone_model(
            model, clone_function=clone_function, recursive=False
        )
        clone.set_weights(model.get_weights())
        return clone

    if isinstance(model, keras.Sequential):
        # Steps are extra outputs, which a Sequential chain cannot carry:
        # rebuild it as a Functional model over the same layers.
        inputs = keras.Input(batch_shape=model.inputs[0].shape)
        outputs = inputs
        for layer in model.layers:
            outputs = layer(outputs)
        model = keras.Model(inputs, outputs, name=model.name)

    steps = []
    names = []

    def call_function(layer, *args, **kwargs):
        result = layer(*args, **kwargs)
        if isinstance(layer, BaseNaisBlock):
            state, block_steps = result
            steps.append(block_steps)
            names.append(layer.name)
            return state
        return result

    clone = keras.models.clone_model(
        model,
        clone_function=clone_function,
        call_function=call_function,
        recursive=False,
    )
    if nested_blocks:
        raise ValueError(
            "`return_steps=True` reports the steps of NAIS blocks called "
            "by the model's own graph; these blocks are nested inside "
            "other layers: "
            f"{[b.name for b in nested_blocks]}. Received: return_steps=True"
        )
    if not steps:
        raise ValueError(
            "`return_steps=True` needs a model with NAIS blocks. Received: "
            f"model={model.name!r} with no NAIS block."
        )
    clone.set_weights(model.get_weights())
    outputs = clone.outputs
    outputs = outputs[0] if len(outputs) == 1 else list(outputs)
    stacked = ops.stack(steps, axis=1)
    result = keras.Model(clone.inputs, (outputs, stacked), name=clone.name)
    result.step_block_names = tuple(names)
    return result
