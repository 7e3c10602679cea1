"""`NaisConvBlock`: the convolutional NAIS-Net block (2-D, channels last)."""

import math

import keras
from keras import ops

from keras_naisnet.base_block import BaseNaisBlock
from keras_naisnet.base_block import _check_positive_int
from keras_naisnet.constraints import ConvStateProjection
from keras_naisnet.constraints import _check_eta
from keras_naisnet.constraints import project_conv_state
from keras_naisnet.initializers import ConvStateInitializer


@keras.saving.register_keras_serializable(package="keras_naisnet")
class NaisConvBlock(BaseNaisBlock):
    """Convolutional NAIS-Net block: a stable recurrence unrolled in depth.

    For a block input `U` of shape `(batch, height, width, channels)` the
    block runs

        X(k+1) = X(k) + step_size * activation(conv(X(k), C) + conv(U, D) + E)

    for `k = 0 .. num_steps - 1` and returns `X(num_steps)`. The state
    kernel `C` maps `filters` to `filters` channels with stride 1 and "same"
    zero padding; the input kernel `D` maps the input channels to `filters`
    with the given `strides` and "same" padding, so the state has the
    resolution of `conv(U, D)`; `E` is a per-channel bias. `conv(U, D) + E`
    is computed once per call.

    Note: with `stability="projection"` (the default) `C` is projected after
    every optimizer step, and once at build, so that for every channel `c`,
    with `centre_c = C[kh//2, kw//2, c, c]` and `r_c` the absolute sum of the
    other taps of output channel `c`: `|1 + centre_c| <= 1 - eta` and
    `|1 + centre_c| + r_c <= 1 - epsilon`. By Gershgorin's theorem every
    eigenvalue of the step Jacobian then lies strictly inside the unit disc
    for `0 < step_size <= 1` and activation slopes in `(0, 1]` (tanh, relu).
    `stability="reparametrization"` applies the projection inside `call`;
    `stability=None` drops the guarantee.

    Args:
        filters: positive integer, the number of state channels.
        kernel_size: odd positive integer, the size of both kernels.
        strides: 1 or 2 (any positive integer), the stride of the input
            convolution.
        num_steps: positive integer `K`, unroll steps.
        step_size: float `h` in `(0, 1]`.
        epsilon: float in `(0, 0.5)`, the stability margin.
        eta: float in `(epsilon, 1)`: centre taps stay in `[-2 + eta, -eta]`,
            so each channel's gain at equilibrium is at most about `1 / eta`.
        activation: `"tanh"` or `"relu"`; others need
            `allow_any_activation=True`.
        stability: `"projection"`, `"reparametrization"` or `None`.
        initial_state: `"zeros"`, or `"input"` when the input already has
            the state shape (same channels, `strides=1`).
        use_bias: whether to add the bias `E`.
        max_steps, tol, return_steps: adaptive depth at inference, as in
            `NaisDenseBlock` (the norm is the root mean square over height,
            width and channels).
        allow_any_activation: accept any activation, with a warning.
        state_initializer: initializer of `C`; the default
            `ConvStateInitializer()` puts the centre taps at -1 (unit gain).
        input_initializer: initializer of `D` (default `"he_normal"`).
        bias_initializer: initializer of `E`.
        state_regularizer, input_regularizer, bias_regularizer: optional
            regularizers.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: tensor `(batch, height, width, channels)`.
        initial_state: optional state tensor that replaces the
            `initial_state` policy for this call.
        training: training mode; adaptive depth applies only when falsy.

    Returns:
        The final state `(batch, ceil(height / strides),
        ceil(width / strides), filters)`, or `(state, steps)`.

    Example:

    >>> block = NaisConvBlock(8, kernel_size=3, strides=2, num_steps=3)
    >>> block(np.zeros((2, 16, 16, 3), "float32")).shape
    (2, 8, 8, 8)
    """

    _input_ndim = 4
    _state_weight_name = "state_kernel"

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        eta=0.1,
        input_initializer="he_normal",
        **kwargs,
    ):
        _check_positive_int("filters", filters)
        _check_positive_int("kernel_size", kernel_size)
        _check_positive_int("strides", strides)
        if kernel_size % 2 == 0:
            raise ValueError(
                "`kernel_size` must be odd: the stability condition is "
                "written around the centre tap of the state kernel. "
                f"Received: kernel_size={kernel_size}"
            )
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        super().__init__(input_initializer=input_initializer, **kwargs)
        self.eta = _check_eta(eta, self.epsilon)
        if self.initial_state == "input" and strides != 1:
            raise ValueError(
                "`initial_state='input'` needs `strides=1`: a strided state "
                f"cannot start from the input. Received: strides={strides}"
            )

    def _default_state_initializer(self):
        return ConvStateInitializer()

    def _state_constraint(self):
        return ConvStateProjection(self.epsilon, self.eta)

    def _state_shape(self, input_shape):
        def out(size):
            return None if size is None else math.ceil(size / self.strides)

        return (
            input_shape[0],
            out(input_shape[1]),
            out(input_shape[2]),
            self.filters,
        )

    def _state_weight_shape(self):
        k = self.kernel_size
        return (k, k, self.filters, self.filters)

    def _input_kernel_shape(self, input_shape):
        k = self.kernel_size
        return (k, k, input_shape[-1], self.filters)

    @property
    def state_kernel(self):
        """The state kernel `C` that `call` uses, `(k, k, filters, filters)`.

        In `"reparametrization"` mode this is the projected kernel. Float32.
        """
        kernel = ops.convert_to_tensor(self._state_variable)
        if self.stability == "reparametrization":
            kernel = project_conv_state(kernel, self.epsilon, self.eta)
        return kernel

    def _state_weights(self):
        return ops.cast(self.state_kernel, self.compute_dtype)

    def _input_product(self, inputs, input_kernel):
        return ops.conv(
            inputs, input_kernel, strides=self.strides, padding="same"
        )

    def _state_term(self, state, state_kernel):
        return ops.conv(state, state_kernel, strides=1, padding="same")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "eta": self.eta,
            }
        )
        return config
