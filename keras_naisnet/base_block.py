"""What the dense and the convolutional NAIS blocks share.

A NAIS block is a time-invariant, non-autonomous dynamical system unrolled
in depth:

    x(k+1) = x(k) + h * act(state_term(x(k)) + input_term(u)),

with one set of weights for every step and the block input `u` entering
every step. `BaseNaisBlock` holds the arguments, their checks, the choice of
stability mode, the step loops and the config; a subclass says what the
state and input terms are (a matrix product or a convolution) and how its
state weights are kept stable.
"""

import warnings

import keras
from keras import ops

from keras_naisnet import unroll

STABILITY_MODES = ("projection", "reparametrization", None)
INITIAL_STATES = ("zeros", "input")
# The fixed unroll is a Python loop, traced once per step: 1000 steps of a
# 4-unit dense block take about 14 s to trace on TensorFlow (CPU).
MAX_NUM_STEPS = 1000
# Step counts and loop bounds are int32.
MAX_MAX_STEPS = 2**31 - 1
# The activations whose slopes lie in [0, 1], which the stability analysis
# of the step Jacobian assumes.
COVERED_ACTIVATIONS = {
    "tanh": keras.activations.tanh,
    "relu": keras.activations.relu,
}


class NaisStabilityWarning(UserWarning):
    """Warns that a block runs outside the conditions of its guarantee."""


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return value


def _check_float_range(name, value, low, high, low_open, high_open):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if not (above and below):
        interval = (
            ("(" if low_open else "[")
            + f"{low}, {high}"
            + (")" if high_open else "]")
        )
        raise ValueError(
            f"`{name}` must be in {interval}. Received: {name}={value!r}"
        )
    return number


class BaseNaisBlock(keras.layers.Layer):
    """Base class of the NAIS blocks; see `NaisDenseBlock`, `NaisConvBlock`.

    A subclass sets `_input_ndim` and `_state_weight_name` and implements
    `_state_weight_shape()`, `_input_kernel_shape(input_shape)`,
    `_input_product(inputs, kernel)`, `_state_term(state, state_weights)`,
    `_state_weights()`, `_state_shape(input_shape)`,
    `_default_state_initializer()` and `_state_constraint()`.

    Args:
        num_steps: integer `K` in `[1, 1000]`, the number of unroll steps
            used in training and, without `tol`, at inference.
        step_size: float `h` in `(0, 1]`.
        epsilon: float in `(0, 0.5)`, the stability margin.
        activation: `"tanh"` or `"relu"` (or their Keras functions); any
            other activation needs `allow_any_activation=True`.
        stability: `"projection"`, `"reparametrization"` or `None`.
        initial_state: `"zeros"` or `"input"` (start from the block input;
            its shape must equal the state shape).
        use_bias: whether the input term has a bias.
        max_steps: integer in `[1, 2**31 - 1]`, the largest depth of
            adaptive inference; defaults to `num_steps`. Used only when
            `tol` is set.
        tol: `None` (fixed depth) or a non-negative float: at inference
            each sample stops once the root mean square of its step change
            is at most `tol`.
        return_steps: whether `call` also returns the number of steps each
            sample took.
        allow_any_activation: accept an activation that the stability
            analysis does not cover, with a `NaisStabilityWarning`.
        state_initializer, input_initializer, bias_initializer:
            initializers of the state weights, the input kernel and bias.
        state_regularizer, input_regularizer, bias_regularizer:
            optional regularizers of the same weights.
        **kwargs: base `Layer` arguments (`name`, `dtype`, `trainable`,
            `activity_regularizer`).
    """

    def __init__(
        self,
        num_steps=10,
        step_size=1.0,
        epsilon=0.01,
        activation="tanh",
        stability="projection",
        initial_state="zeros",
        use_bias=True,
        max_steps=None,
        tol=None,
        return_steps=False,
        allow_any_activation=False,
        state_initializer=None,
        input_initializer="glorot_uniform",
        bias_initializer="zeros",
        state_regularizer=None,
        input_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        self.num_steps = _check_positive_int("num_steps", num_steps)
        if self.num_steps > MAX_NUM_STEPS:
            raise ValueError(
                f"`num_steps` must be at most {MAX_NUM_STEPS}: the fixed "
                "unroll is traced step by step. For deeper inference use "
                f"`tol` and `max_steps`. Received: num_steps={num_steps}"
            )
        self.step_size = _check_float_range(
            "step_size", step_size, 0.0, 1.0, True, False
        )
        self.epsilon = _check_float_range(
            "epsilon", epsilon, 0.0, 0.5, True, True
        )
        if stability not in STABILITY_MODES:
            raise ValueError(
                f"`stability` must be one of {STABILITY_MODES}. "
                f"Received: stability={stability!r}"
            )
        if initial_state not in INITIAL_STATES:
            raise ValueError(
                f"`initial_state` must be one of {INITIAL_STATES}. "
                f"Received: initial_state={initial_state!r}"
            )
        self.max_steps = _check_positive_int(
            "max_steps", num_steps if max_steps is None else max_steps
        )
        if self.max_steps > MAX_MAX_STEPS:
            raise ValueError(
                f"`max_steps` must be at most {MAX_MAX_STEPS}, since step "
                f"counts are int32. Received: max_steps={max_steps}"
            )
        if tol is not None:
            tol = _check_float_range("tol", tol, 0.0, float("inf"), False, True)
        # Variables stay float32 under mixed precision: the projections and
        # the norms of the stability check need the full precision.
        super().__init__(autocast=False, **kwargs)

        self.stability = stability
        self.initial_state = initial_state
        self.use_bias = bool(use_bias)
        self.tol = tol
        self.return_steps = bool(return_steps)
        self.allow_any_activation = bool(allow_any_activation)
        self.activation = keras.activations.get(activation)
        self._check_activation(activation)

        self.state_initializer = keras.initializers.get(
            state_initializer or self._default_state_initializer()
        )
        self.input_initializer = keras.initializers.get(input_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.state_regularizer = keras.regularizers.get(state_regularizer)
        self.input_regularizer = keras.regularizers.get(input_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.input_spec = keras.layers.InputSpec(ndim=self._input_ndim)

    def _check_activation(self, activation):
        if self.stability is None:
            return
        if any(self.activation is fn for fn in COVERED_ACTIVATIONS.values()):
            return
        if not self.allow_any_activation:
            raise ValueError(
                "The stability guarantee covers only the activations "
                f"{tuple(COVERED_ACTIVATIONS)}. Pass "
                "`allow_any_activation=True` to use another one without "
                f"the guarantee. Received: activation={activation!r}"
            )
        warnings.warn(
            f"Block '{self.name}' uses activation {activation!r}, which the "
            "stability analysis does not cover: its conditions are still "
            "enforced, but they no longer guarantee a stable block.",
            NaisStabilityWarning,
            stacklevel=3,
        )

    def _state_constraint(self):
        """The constraint for the state weights in projection mode."""
        raise NotImplementedError

    def build(self, input_shape):
        if len(input_shape) != self._input_ndim:
            raise ValueError(
                f"{type(self).__name__} expects inputs of rank "
                f"{self._input_ndim}. Received: input_shape={input_shape}"
            )
        if self.initial_state == "input":
            state_shape = self._state_shape(input_shape)
            if tuple(state_shape[1:]) != tuple(input_shape[1:]):
                raise ValueError(
                    "`initial_state='input'` needs the block input to have "
                    f"the state shape {state_shape[1:]}. Received: "
                    f"input_shape={input_shape}"
                )
        if input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} needs a known last input dimension. "
                f"Received: input_shape={input_shape}"
            )
        self._state_variable = self.add_weight(
            name=self._state_weight_name,
            shape=self._state_weight_shape(),
            initializer=self.state_initializer,
            regularizer=self.state_regularizer,
            constraint=(
                self._state_constraint()
                if self.stability == "projection"
                else None
            ),
        )
        self._input_kernel = self.add_weight(
            name="input_kernel",
            shape=self._input_kernel_shape(input_shape),
            initializer=self.input_initializer,
            regularizer=self.input_regularizer,
        )
        self._bias = None
        if self.use_bias:
            self._bias = self.add_weight(
                name="bias",
                shape=(self._state_weight_shape()[-1],),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )
        # A clear ValueError, not a backend error from inside `call`, when a
        # built block gets another input size.
        self.input_spec = keras.layers.InputSpec(
            ndim=self._input_ndim, axes={-1: input_shape[-1]}
        )
        # Keras applies constraints only after optimizer steps, so the
        # initial weights are projected here once.
        if self.stability == "projection":
            self.project()

    @property
    def input_kernel(self):
        """The input kernel (`B` dense, `D` conv), a variable."""
        return self._input_kernel

    @property
    def bias(self):
        """The bias of the input term, or `None` when `use_bias=False`."""
        return self._bias

    def _input_term(self, inputs):
        term = self._input_product(inputs, self._cast(self._input_kernel))
        if self._bias is not None:
            term = term + self._cast(self._bias)
        return term

    def project(self):
        """Projects the stored state weights into the stable set.

        Useful after `set_weights`, `load_weights` or a custom training
        loop that bypasses the optimizer. Does nothing when
        `stability=None`.
        """
        if self.stability is None:
            return
        variable = self._state_variable
        variable.assign(self._state_constraint()(variable))

    def call(self, inputs, initial_state=None, training=None):
        inputs = ops.cast(inputs, self.compute_dtype)
        # Everything that does not depend on the step is computed once.
        input_term = self._input_term(inputs)
        state_weights = self._state_weights()
        activation = self.activation
        step_size = ops.cast(self.step_size, self.compute_dtype)

        def increment(z):
            # h = 1 is the common case: skipping the product saves an
            # elementwise pass per step, forward and backward.
            if self.step_size == 1.0:
                return activation(z)
            return step_size * activation(z)

        def step(state):
            return increment(
                self._state_term(state, state_weights) + input_term
            )

        zero_start = initial_state is None and self.initial_state == "zeros"
        if initial_state is not None:
            state = ops.cast(initial_state, self.compute_dtype)
            self._check_initial_state_shape(state, input_term)
        elif self.initial_state == "input":
            state = inputs

        if self.tol is not None and not training:
            if zero_start:
                state = ops.zeros_like(input_term)
            state, steps = unroll.adaptive_unroll(
                step, state, self.max_steps, self.tol
            )
        else:
            num_steps = self.num_steps
            if zero_start:
                # From x(0) = 0 the state term of the first step is exactly
                # 0, so its convolution (or product) is skipped.
                state = increment(input_term)
                num_steps -= 1
            state = unroll.fixed_unroll(step, state, num_steps)
            steps = None
            if self.return_steps:
                steps = ops.full(ops.shape(state)[:1], self.num_steps, "int32")
        if self.return_steps:
            return state, steps
        return state

    def _check_initial_state_shape(self, state, input_term):
        # Static shapes only, so this is free inside a traced function.
        expected, received = input_term.shape[1:], state.shape[1:]
        mismatch = len(expected) != len(received) or any(
            a is not None and b is not None and a != b
            for a, b in zip(expected, received)
        )
        if mismatch:
            raise ValueError(
                "The `initial_state` call argument must have the state shape "
                f"(batch,) + {tuple(expected)}. "
                f"Received: initial_state.shape={tuple(state.shape)}"
            )

    def _cast(self, variable):
        # `autocast=False` leaves variables in float32; cast them here.
        if variable is None:
            return None
        return ops.cast(variable, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        state_shape = self._state_shape(input_shape)
        if self.return_steps:
            return state_shape, (input_shape[0],)
        return state_shape

    def compute_output_spec(self, inputs, initial_state=None, training=None):
        state = keras.KerasTensor(
            self._state_shape(inputs.shape), dtype=self.compute_dtype
        )
        if self.return_steps:
            return state, keras.KerasTensor((inputs.shape[0],), dtype="int32")
        return state

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_steps": self.num_steps,
                "step_size": self.step_size,
                "epsilon": self.epsilon,
                "activation": keras.activations.serialize(self.activation),
                "stability": self.stability,
                "initial_state": self.initial_state,
                "use_bias": self.use_bias,
                "max_steps": self.max_steps,
                "tol": self.tol,
                "return_steps": self.return_steps,
                "allow_any_activation": self.allow_any_activation,
                "state_initializer": keras.initializers.serialize(
                    self.state_initializer
                ),
                "input_initializer": keras.initializers.serialize(
                    self.input_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
                "state_regularizer": keras.regularizers.serialize(
                    self.state_regularizer
                ),
                "input_regularizer": keras.regularizers.serialize(
                    self.input_regularizer
                ),
                "bias_regularizer": keras.regularizers.serialize(
                    self.bias_regularizer
                ),
            }
        )
        return config
