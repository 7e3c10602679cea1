"""The step loops shared by the NAIS blocks.

Both loops take a `step` function that returns the state change
`x(k+1) - x(k)` for a state `x(k)`; the blocks build it from weights that
do not depend on `k`, so nothing but the state update runs per step.

- `fixed_unroll` runs exactly `num_steps` steps. It is a plain Python loop,
  so every backend can differentiate it and XLA sees one straight graph.
- `adaptive_unroll` runs each sample until its step change is at most `tol`
  or until `max_steps`, freezing the samples that have settled. It is a
  `keras.ops.while_loop` with a data-dependent condition: TensorFlow exports
  it inside a SavedModel, but it is an inference-time loop (JAX cannot
  differentiate it).
"""

import keras
from keras import ops


def _traced_by_torch():
    """Whether PyTorch is tracing or compiling the current call.

    The torch backend runs `ops.while_loop` as a Python loop whose
    condition is read from a tensor, so a tracer (`torch.jit.trace`, used by
    ONNX export) or `torch.export` would record the trip count of the
    example input and silently reuse it for every other input.
    """
    if keras.backend.backend() != "torch":
        return False
    import torch

    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def step_change_rms(delta):
    """Root mean square of a per-sample state change, in float32.

    This is the norm that adaptive depth compares with `tol`: the square
    root of the mean of `delta**2` over every axis but the batch axis, so
    that `tol` does not depend on the size of the state.

    Args:
        delta: tensor of shape `(batch, ...)`.

    Returns:
        A float32 tensor of shape `(batch,)`.
    """
    delta = ops.cast(delta, "float32")
    axes = tuple(range(1, len(delta.shape)))
    return ops.sqrt(ops.mean(ops.square(delta), axis=axes))


def fixed_unroll(step, state, num_steps):
    """Applies `state <- state + step(state)` exactly `num_steps` times.

    Args:
        step: callable mapping a state to its change.
        state: the initial state tensor.
        num_steps: positive Python integer.

    Returns:
        The final state.
    """
    # TODO: a symbolic loop (scan or while_loop with maximum_iterations)
    # would keep the traced graph small for num_steps in the hundreds; the
    # Python loop is kept because it is differentiable and XLA-compilable
    # on every backend.
    for _ in range(num_steps):
        state = state + step(state)
    return state


def adaptive_unroll(step, state, max_steps, tol):
    """Unrolls each sample until its step change is at most `tol`.

    A sample takes a step while it is active, then becomes inactive when
    the root mean square of that step (see `step_change_rms`) is at most
    `tol`. The loop ends when no sample is active or after `max_steps`
    steps. A sample whose change is NaN never counts as settled, so it
    runs to `max_steps`; the loop itself always ends.

    Args:
        step: callable mapping a state to its change.
        state: the initial state tensor, shape `(batch, ...)`.
        max_steps: positive Python integer, the largest depth.
        tol: non-negative float.

    Returns:
        A tuple `(state, steps)`: the final state and an int32 tensor of
        shape `(batch,)` with the number of steps each sample took.
    """
    batch_shape = ops.shape(state)[:1]
    broadcast_shape = (-1,) + (1,) * (len(state.shape) - 1)
    steps = ops.zeros(batch_shape, dtype="int32")
    active = ops.ones(batch_shape, dtype="bool")

    def cond(state, steps, active):
        return ops.any(active)

    def body(state, steps, active):
        delta = step(state)
        keep = ops.reshape(active, broadcast_shape)
        state = ops.where(keep, state + delta, state)
        steps = steps + ops.cast(active, "int32")
        change = step_change_rms(delta)
        # Written as "above tol or NaN" rather than "not (change <= tol)":
        # TensorFlow's graph optimizer rewrites `logical_not(a <= b)` into
        # `a > b`, which is False for NaN and stopped NaN samples at once.
        unsettled = ops.logical_or(change > tol, ops.isnan(change))
        return state, steps, ops.logical_and(active, unsettled)

    if _traced_by_torch():
        # Same result: a settled sample is frozen by the mask, so running
        # all `max_steps` steps changes neither its state nor its count.
        for _ in range(max_steps):
            state, steps, active = body(state, steps, active)
        return state, steps
    state, steps, _ = ops.while_loop(
        cond, body, (state, steps, active), maximum_iterations=max_steps
    )
    return state, steps
