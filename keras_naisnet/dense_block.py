"""`NaisDenseBlock`: the fully connected NAIS-Net block."""

import keras
from keras import ops

from keras_naisnet.base_block import BaseNaisBlock
from keras_naisnet.base_block import _check_positive_int
from keras_naisnet.constraints import DenseStateProjection
from keras_naisnet.constraints import project_dense_state


@keras.saving.register_keras_serializable(package="keras_naisnet")
class NaisDenseBlock(BaseNaisBlock):
    """Fully connected NAIS-Net block: a stable recurrence unrolled in depth.

    For a block input `u` of shape `(batch, input_dim)` the block runs

        x(k+1) = x(k) + step_size * activation(x(k) A + u B + b)

    for `k = 0 .. num_steps - 1` and returns `x(num_steps)`, of shape
    `(batch, units)`. The weights are shared by every step and `u` enters
    every step. The state matrix is `A = -(R^T R + epsilon I)` with `R` a
    trainable `units x units` matrix; `u B + b` is computed once per call.

    Note: with `stability="projection"` (the default) `R` is rescaled after
    every optimizer step, and once at build, so that
    `||R^T R||_F <= 1 - 2 epsilon`; then the eigenvalues of `I + A` lie in
    `[epsilon, 1 - epsilon]`. With `tanh` the block has, for every input,
    a single equilibrium `x = (R^T R + epsilon I)^-1 (u B + b)` that the
    state reaches from any start; with `relu` two trajectories never move
    apart (incremental stability). Both hold for `0 < step_size <= 1`.
    `stability="reparametrization"` applies the same rescaling inside
    `call`, so any stored `R` gives a stable block; `stability=None` drops
    the guarantee (a shared-weight, non-autonomous ResNet block).

    Args:
        units: positive integer, the size of the state.
        num_steps: positive integer `K`, unroll steps in training and, when
            `tol` is `None`, at inference.
        step_size: float `h` in `(0, 1]`.
        epsilon: float in `(0, 0.5)`, the stability margin.
        activation: `"tanh"` or `"relu"`; others need
            `allow_any_activation=True` and lose the guarantee.
        stability: `"projection"`, `"reparametrization"` or `None`.
        initial_state: `"zeros"`, or `"input"` when `input_dim == units`.
        use_bias: whether to add the bias `b`.
        max_steps: largest depth of adaptive inference (default
            `num_steps`).
        tol: `None` for a fixed depth, or a non-negative float: with
            `training=False` each sample is unrolled until the root mean
            square of its step change `x(k+1) - x(k)` is at most `tol`, or
            until `max_steps`.
        return_steps: if `True`, `call` returns `(state, steps)` where
            `steps` (int32, shape `(batch,)`) counts each sample's steps.
        allow_any_activation: accept any activation, with a warning.
        state_initializer: initializer of `R` (default `"orthogonal"`,
            which the projection scales to the largest stable `R^T R`
            with equal eigenvalues).
        input_initializer: initializer of `B`.
        bias_initializer: initializer of `b`.
        state_regularizer, input_regularizer, bias_regularizer: optional
            regularizers of `R`, `B` and `b`.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor of shape `(batch, input_dim)`.
        initial_state: optional tensor of shape `(batch, units)` that
            replaces the `initial_state` policy for this call.
        training: training mode; adaptive depth applies only when it is
            falsy.

    Returns:
        The final state, shape `(batch, units)`, or `(state, steps)`.

    Example:

    >>> block = NaisDenseBlock(8, num_steps=5)
    >>> block(np.zeros((2, 3), "float32")).shape
    (2, 8)
    """

    _input_ndim = 2
    _state_weight_name = "state_factor"

    def __init__(self, units, **kwargs):
        self.units = _check_positive_int("units", units)
        super().__init__(**kwargs)

    def _default_state_initializer(self):
        return "orthogonal"

    def _state_constraint(self):
        return DenseStateProjection(self.epsilon)

    def _state_shape(self, input_shape):
        return (input_shape[0], self.units)

    def _state_weight_shape(self):
        return (self.units, self.units)

    def _input_kernel_shape(self, input_shape):
        return (input_shape[-1], self.units)

    @property
    def state_factor(self):
        """The stored trainable factor `R` (a variable)."""
        return self._state_variable

    @property
    def state_matrix(self):
        """The state matrix `A = -(R^T R + epsilon I)` that `call` uses.

        In `"reparametrization"` mode `R` is projected first. Float32.
        """
        factor = ops.convert_to_tensor(self._state_variable)
        if self.stability == "reparametrization":
            factor = project_dense_state(factor, self.epsilon)
        gram = ops.matmul(ops.transpose(factor), factor)
        return -(gram + self.epsilon * ops.eye(self.units, dtype=gram.dtype))

    def _state_weights(self):
        return ops.cast(self.state_matrix, self.compute_dtype)

    def _input_product(self, inputs, input_kernel):
        return ops.matmul(inputs, input_kernel)

    def _state_term(self, state, state_matrix):
        return ops.matmul(state, state_matrix)

    def get_config(self):
        config = super().get_config()
        config["units"] = self.units
        return config
