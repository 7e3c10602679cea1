"""The stability study of NAIS-Net: one deep stage built from four switches.

The paper's first experiment (arXiv:1804.07209, the MNIST study) asks what
each ingredient of NAIS-Net contributes. One stage of `num_steps` (K)
residual layers is built with four switches:

- shared weights (SH): one weight set for all K layers, instead of K sets;
- the non-autonomous input skip (NA): the stage input `u` enters every
  layer, instead of only setting the initial state;
- batch normalization (BN) of each layer's pre-activation;
- the stability projection (Stable): `R` is projected after every
  optimizer step so that `||R^T R||_F <= 1 - 2 epsilon`.

Every variant runs the same layer, for `k = 0 .. K - 1`,

    x(k+1) = x(k) + step_size * tanh(BN(x(k) A_k + u B_k + b_k)),

from `x(0) = u`, with `A_k = -(R_k^T R_k + epsilon I)`. Every variant
starts from the same `R_k`: an orthogonal matrix scaled so that
`||R^T R||_F = 1 - 2 epsilon` (`study_state_initializer`), which is where
the projection puts NAIS-Net's default initialization. Without SH the
layers have their own `R_k`, `B_k`, `b_k` (and batch norm); without NA the
term `u B_k` is absent; without BN the batch norm is the identity; without
Stable `R_k` is free, so `I + step_size * A_k` can have eigenvalues below
-1. One parametrization and one initialization for all variants mean
that flipping a switch changes exactly one thing. The price: the state
matrix of every variant is symmetric and negative definite, so the
unconstrained variants are not fully general ResNet layers (their step
matrix `I + h A_k` can leave the unit disc only below -1).

NAIS-Net is SH + NA + Stable and is a
`NaisDenseBlock(stability="projection")`; SH + NA alone is a
`NaisDenseBlock(stability=None)`; the other combinations are an
`AblationStage`.

The stage is fully connected (the dense block), not convolutional: a
30-step stage trains in seconds per epoch on a CPU. A variant's model is
`Flatten -> Dense(units) (the stage input u) -> stage -> Dense(classes)`.

Depth at evaluation. `stage_trajectory` unrolls any stage to any depth
with its trained weights. Shared-weight stages simply run more (or fewer)
steps. An unshared stage has only K layers: for `k >= K` it repeats its
last layer `K - 1` (the natural continuation of a stage whose layers are
its time steps); this is documented in the results, and the repeated
steps are the part of its curve past the training depth.
"""

import collections
import math

import keras
import numpy as np
from keras import ops

from keras_naisnet.base_block import _check_float_range
from keras_naisnet.base_block import _check_positive_int
from keras_naisnet.constraints import DenseStateProjection
from keras_naisnet.dense_block import NaisDenseBlock

Switches = collections.namedtuple(
    "Switches", ["shared_weights", "input_skip", "batch_norm", "stable"]
)
Switches.__doc__ = """The four switches of a stage in the stability study.

Fields: `shared_weights` (SH), `input_skip` (NA), `batch_norm` (BN),
`stable` (the stability projection).
"""


def variant_name(switches):
    """The study's name of a switch combination, e.g. `"ResNet-SH-NA"`.

    SH + NA + Stable without BN is `"NAIS-Net"`; otherwise `"ResNet"`
    followed by the switches that are on, in the order SH, NA, Stable, BN.

    Args:
        switches: a `Switches` tuple.

    Returns:
        The name, a string.

    Example:

    >>> variant_name(Switches(True, True, True, False))
    'ResNet-SH-NA-BN'
    """
    shared, skip, norm, stable = tuple(bool(s) for s in switches)
    if shared and skip and stable and not norm:
        return "NAIS-Net"
    parts = ["ResNet"]
    parts += ["SH"] if shared else []
    parts += ["NA"] if skip else []
    parts += ["Stable"] if stable else []
    parts += ["BN"] if norm else []
    return "-".join(parts)


def _study_variants():
    # Batch norm rescales each pre-activation by gamma / sigma, which the
    # stability analysis does not bound, so the stable variants run
    # without it; every unprojected variant runs with and without it.
    # Unshared stable stages are left out: the stability analysis is for
    # one time-invariant system (`build_stage` still builds them).
    variants = {}
    for shared, skip in ((False, False), (True, False), (False, True)):
        for norm in (False, True):
            switches = Switches(shared, skip, norm, False)
            variants[variant_name(switches)] = switches
    for norm in (False, True):
        switches = Switches(True, True, norm, False)
        variants[variant_name(switches)] = switches
    for switches in (
        Switches(True, False, False, True),
        Switches(True, True, False, True),
    ):
        variants[variant_name(switches)] = switches
    return variants


STUDY_VARIANTS = _study_variants()
"""The variants of the study, name -> `Switches`, in the table's order."""


def study_state_initializer(units, epsilon=0.01):
    """The common initializer of `R` for every variant of the study.

    An orthogonal matrix times `sqrt((1 - 2 epsilon) / sqrt(units))`, so
    that `R^T R` is a multiple of the identity with Frobenius norm
    `1 - 2 epsilon`: the largest stable `R^T R` with equal eigenvalues,
    left unchanged by the projection.

    Args:
        units: positive integer, the state size.
        epsilon: float in `(0, 0.5)`.

    Returns:
        A `keras.initializers.Orthogonal`.

    Example:

    >>> round(study_state_initializer(64).gain, 4)
    0.35
    """
    units = _check_positive_int("units", units)
    epsilon = _check_float_range("epsilon", epsilon, 0.0, 0.5, True, True)
    return keras.initializers.Orthogonal(
        gain=math.sqrt((1.0 - 2.0 * epsilon) / math.sqrt(units))
    )


@keras.saving.register_keras_serializable(package="keras_naisnet")
class AblationStage(keras.layers.Layer):
    """A deep residual stage with the four switches of the stability study.

    For a stage input `u` of shape `(batch, units)` the stage runs, from
    `x(0) = u` and for `k = 0 .. num_steps - 1`,

        x(k+1) = x(k) + step_size * activation(BN_k(x(k) A_k + u B_k + b_k))

    with `A_k = -(R_k^T R_k + epsilon I)`, and returns `x(num_steps)`.
    `shared_weights=True` makes `R_k`, `B_k`, `b_k` and the batch norm the
    same for every `k` (one set of variables); `input_skip=False` removes
    `u B_k`, so `u` only sets `x(0)`; `batch_norm=False` drops `BN_k`;
    `stable=True` attaches `DenseStateProjection(epsilon)` to every `R_k`
    and projects it once at build. Every `R_k` starts from
    `study_state_initializer(units, epsilon)`.

    Note: SH + NA without batch norm is exactly a `NaisDenseBlock` with
    `initial_state="input"`; `build_stage` returns that block for those
    combinations. With batch norm the projection no longer bounds the
    step Jacobian (batch norm rescales the pre-activation).

    Args:
        units: positive integer, the size of the state and of `u`.
        num_steps: positive integer `K`, the number of layers.
        shared_weights: whether every layer uses one weight set.
        input_skip: whether `u` enters every layer (non-autonomous).
        batch_norm: whether each layer normalizes its pre-activation.
        stable: whether each `R_k` is projected into the stable set.
        step_size: float `h` in `(0, 1]`.
        epsilon: float in `(0, 0.5)`, the margin of `A_k`.
        activation: the activation, `"tanh"` by default.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor `u` of shape `(batch, units)`.
        training: training mode (batch statistics for batch norm).

    Returns:
        The final state, shape `(batch, units)`.

    Example:

    >>> stage = AblationStage(8, num_steps=4, shared_weights=False)
    >>> tuple(stage(np.zeros((2, 8), "float32")).shape)
    (2, 8)
    """

    def __init__(
        self,
        units,
        num_steps=30,
        shared_weights=True,
        input_skip=True,
        batch_norm=False,
        stable=False,
        step_size=1.0,
        epsilon=0.01,
        activation="tanh",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = _check_positive_int("units", units)
        self.num_steps = _check_positive_int("num_steps", num_steps)
        self.shared_weights = bool(shared_weights)
        self.input_skip = bool(input_skip)
        self.batch_norm = bool(batch_norm)
        self.stable = bool(stable)
        self.step_size = _check_float_range(
            "step_size", step_size, 0.0, 1.0, True, False
        )
        self.epsilon = _check_float_range(
            "epsilon", epsilon, 0.0, 0.5, True, True
        )
        self.activation = keras.activations.get(activation)

    @property
    def num_weight_sets(self):
        """How many distinct layers the stage has: 1 if shared, else K."""
        return 1 if self.shared_weights else self.num_steps

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] != self.units:
            raise ValueError(
                "AblationStage starts from x(0) = u, so its input must have "
                f"shape (batch, units) with units={self.units}. Received: "
                f"input_shape={input_shape}"
            )
        constraint = DenseStateProjection(self.epsilon) if self.stable else None
        square = (self.units, self.units)
        self.state_factors = []
        self.input_kernels = []
        self.biases = []
        self.batch_norms = []
        for k in range(self.num_weight_sets):
            self.state_factors.append(
                self.add_weight(
                    name=f"state_factor_{k}",
                    shape=square,
                    initializer=study_state_initializer(
                        self.units, self.epsilon
                    ),
                    constraint=constraint,
                )
            )
            if self.input_skip:
                self.input_kernels.append(
                    self.add_weight(
                        name=f"input_kernel_{k}",
                        shape=square,
                        initializer="glorot_uniform",
                    )
                )
            self.biases.append(
                self.add_weight(
                    name=f"bias_{k}", shape=(self.units,), initializer="zeros"
                )
            )
            if self.batch_norm:
                norm = keras.layers.BatchNormalization(name=f"batch_norm_{k}")
                norm.build((None, self.units))
                self.batch_norms.append(norm)
        # Keras applies constraints only after optimizer steps.
        if self.stable:
            for factor in self.state_factors:
                factor.assign(constraint(factor))

    def state_matrix(self, index=0):
        """The state matrix `A_index = -(R^T R + epsilon I)` of one layer."""
        factor = ops.cast(self.state_factors[index], self.compute_dtype)
        gram = ops.matmul(ops.transpose(factor), factor)
        return -(gram + self.epsilon * ops.eye(self.units, dtype=gram.dtype))

    def trajectory(
        self, inputs, num_steps=None, initial_state=None, training=None
    ):
        """Unrolls the stage and returns every state and pre-activation.

        Args:
            inputs: tensor `u` of shape `(batch, units)`.
            num_steps: depth to unroll (default `self.num_steps`); past
                `self.num_steps` an unshared stage repeats its last layer.
            initial_state: optional `x(0)` (default `u`).
            training: training mode for batch norm.

        Returns:
            `(states, preactivations)`: lists of `num_steps + 1` states
            `x(0) .. x(num_steps)` and `num_steps` pre-activations (after
            batch norm), each of shape `(batch, units)`.
        """
        num_steps = self.num_steps if num_steps is None else num_steps
        inputs = ops.cast(inputs, self.compute_dtype)
        state = inputs if initial_state is None else initial_state
        state = ops.cast(state, self.compute_dtype)
        # The input term of each weight set is computed once per call.
        matrices = [self.state_matrix(i) for i in range(self.num_weight_sets)]
        input_terms = []
        for i in range(self.num_weight_sets):
            term = ops.cast(self.biases[i], self.compute_dtype)
            if self.input_skip:
                kernel = ops.cast(self.input_kernels[i], self.compute_dtype)
                term = ops.matmul(inputs, kernel) + term
            input_terms.append(term)
        states = [state]
        preactivations = []
        for k in range(num_steps):
            i = min(k, self.num_weight_sets - 1)
            z = ops.matmul(state, matrices[i]) + input_terms[i]
            if self.batch_norm:
                z = self.batch_norms[i](z, training=training)
            state = state + self.step_size * self.activation(z)
            states.append(state)
            preactivations.append(z)
        return states, preactivations

    def call(self, inputs, training=None):
        states, _ = self.trajectory(inputs, training=training)
        return states[-1]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "num_steps": self.num_steps,
                "shared_weights": self.shared_weights,
                "input_skip": self.input_skip,
                "batch_norm": self.batch_norm,
                "stable": self.stable,
                "step_size": self.step_size,
                "epsilon": self.epsilon,
                "activation": keras.activations.serialize(self.activation),
            }
        )
        return config


def build_stage(
    units,
    switches,
    num_steps=30,
    step_size=1.0,
    epsilon=0.01,
    name="stage",
):
    """Builds the stage of one switch combination (see the module doc).

    Args:
        units: positive integer, the state size (and the size of `u`).
        switches: a `Switches` tuple, or a name of `STUDY_VARIANTS`.
        num_steps: positive integer `K`, the training depth.
        step_size: float `h` in `(0, 1]`.
        epsilon: float in `(0, 0.5)`.
        name: the layer name.

    Returns:
        A `NaisDenseBlock` for SH + NA without batch norm (projected when
        Stable), otherwise an `AblationStage`. Both start from `x(0) = u`
        and use tanh.

    Example:

    >>> build_stage(16, "NAIS-Net", num_steps=30).stability
    'projection'
    """
    switches = _as_switches(switches)
    if (
        switches.shared_weights
        and switches.input_skip
        and not (switches.batch_norm)
    ):
        return NaisDenseBlock(
            units,
            num_steps=num_steps,
            step_size=step_size,
            epsilon=epsilon,
            activation="tanh",
            stability="projection" if switches.stable else None,
            initial_state="input",
            state_initializer=study_state_initializer(units, epsilon),
            name=name,
        )
    return AblationStage(
        units,
        num_steps=num_steps,
        shared_weights=switches.shared_weights,
        input_skip=switches.input_skip,
        batch_norm=switches.batch_norm,
        stable=switches.stable,
        step_size=step_size,
        epsilon=epsilon,
        activation="tanh",
        name=name,
    )


def _as_switches(switches):
    if isinstance(switches, str):
        if switches not in STUDY_VARIANTS:
            raise ValueError(
                f"`switches` must be a Switches tuple or one of "
                f"{tuple(STUDY_VARIANTS)}. Received: switches={switches!r}"
            )
        return STUDY_VARIANTS[switches]
    if len(switches) != 4:
        raise ValueError(
            "`switches` must have four entries (shared_weights, input_skip, "
            f"batch_norm, stable). Received: switches={switches!r}"
        )
    return Switches(*(bool(s) for s in switches))


def build_ablation_model(
    switches,
    input_shape=(28, 28, 1),
    num_classes=10,
    units=64,
    num_steps=30,
    step_size=1.0,
    epsilon=0.01,
):
    """Builds `Flatten -> Dense(units) -> stage -> Dense(num_classes)`.

    The layers are named `"flatten"`, `"input_projection"` (its output is
    the stage input `u`), `"stage"` and `"classifier"` (logits).

    Args:
        switches: a `Switches` tuple or a name of `STUDY_VARIANTS`.
        input_shape: shape of one image.
        num_classes: number of classes.
        units: state size of the stage.
        num_steps: training depth `K` of the stage.
        step_size: float `h` in `(0, 1]`.
        epsilon: float in `(0, 0.5)`.

    Returns:
        An uncompiled `keras.Model` named after the variant.

    Example:

    >>> model = build_ablation_model("ResNet-SH", units=8, num_steps=3)
    >>> model.output_shape
    (None, 10)
    """
    switches = _as_switches(switches)
    units = _check_positive_int("units", units)
    num_classes = _check_positive_int("num_classes", num_classes)
    images = keras.Input(input_shape)
    x = keras.layers.Flatten(name="flatten")(images)
    u = keras.layers.Dense(units, name="input_projection")(x)
    stage = build_stage(units, switches, num_steps, step_size, epsilon)
    state = stage(u)
    logits = keras.layers.Dense(num_classes, name="classifier")(state)
    return keras.Model(images, logits, name=variant_name(switches))


def stage_trajectory(
    stage, inputs, num_steps=None, initial_state=None, training=False
):
    """Unrolls a study stage to any depth with its trained weights.

    Shared-weight stages run their one layer `num_steps` times; an
    unshared `AblationStage` repeats its last layer past its depth K.

    Args:
        stage: a `NaisDenseBlock` or `AblationStage` (built here if
            needed).
        inputs: the stage input `u`, shape `(batch, units)`.
        num_steps: depth (default: the stage's `num_steps`).
        initial_state: optional `x(0)`; default as the stage (`u` for
            study stages).
        training: training mode (batch norm).

    Returns:
        `(states, preactivations)`: `num_steps + 1` states and `num_steps`
        pre-activations, tensors of shape `(batch, units)`.

    Example:

    >>> stage = build_stage(8, "NAIS-Net", num_steps=3)
    >>> states, _ = stage_trajectory(stage, np.ones((2, 8), "float32"), 9)
    >>> len(states)
    10
    """
    if not isinstance(stage, (NaisDenseBlock, AblationStage)):
        raise ValueError(
            "`stage` must be a NaisDenseBlock or an AblationStage. "
            f"Received: stage={stage!r}"
        )
    inputs = ops.convert_to_tensor(inputs)
    if not stage.built:
        stage.build(tuple(inputs.shape))
    if isinstance(stage, AblationStage):
        return stage.trajectory(inputs, num_steps, initial_state, training)
    num_steps = stage.num_steps if num_steps is None else num_steps
    dtype = stage.compute_dtype
    inputs = ops.cast(inputs, dtype)
    # The block's own step, x + h * act(x A + u B + b), written out so that
    # every intermediate state and pre-activation can be returned.
    matrix = ops.cast(stage.state_matrix, dtype)
    term = ops.matmul(inputs, ops.cast(stage.input_kernel, dtype))
    if stage.bias is not None:
        term = term + ops.cast(stage.bias, dtype)
    if initial_state is not None:
        state = ops.cast(initial_state, dtype)
    elif stage.initial_state == "input":
        state = inputs
    else:
        state = ops.zeros_like(term)
    states = [state]
    preactivations = []
    for _ in range(num_steps):
        z = ops.matmul(state, matrix) + term
        state = state + stage.step_size * stage.activation(z)
        states.append(state)
        preactivations.append(z)
    return states, preactivations


def _stage_input(model, images):
    flat = model.get_layer("flatten")(images)
    return model.get_layer("input_projection")(flat)


def evaluate_by_depth(model, images, labels, max_steps, batch_size=500):
    """Test loss and accuracy of a study model unrolled to 1..max_steps.

    The stage of `model` (from `build_ablation_model`) is unrolled once to
    `max_steps`; the classifier reads every intermediate state. Batch norm
    uses its moving statistics.

    Args:
        model: a model from `build_ablation_model`.
        images: array of images, shape `(n,) + input_shape`.
        labels: integer array of shape `(n,)`.
        max_steps: positive integer, the deepest unroll.
        batch_size: images per evaluation batch.

    Returns:
        A dict with `"num_steps"` (1..max_steps), `"loss"` (mean sparse
        categorical cross-entropy) and `"accuracy"`, numpy arrays of
        length `max_steps`.

    Example:

    >>> model = build_ablation_model("NAIS-Net", units=8, num_steps=3)
    >>> result = evaluate_by_depth(
    ...     model, np.zeros((4, 28, 28, 1)), np.zeros(4, "int32"), 9)
    >>> result["loss"].shape
    (9,)
    """
    max_steps = _check_positive_int("max_steps", max_steps)
    stage = model.get_layer("stage")
    classifier = model.get_layer("classifier")
    loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=None
    )
    loss_sum = np.zeros(max_steps)
    correct = np.zeros(max_steps)
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], "float32")
        batch_labels = np.asarray(labels[start : start + batch_size])
        u = _stage_input(model, batch)
        states, _ = stage_trajectory(stage, u, max_steps)
        for k, state in enumerate(states[1:]):
            logits = classifier(state)
            losses = ops.convert_to_numpy(loss_fn(batch_labels, logits))
            predicted = ops.convert_to_numpy(ops.argmax(logits, axis=-1))
            loss_sum[k] += float(np.sum(losses))
            correct[k] += float(np.sum(predicted == batch_labels))
    return {
        "num_steps": np.arange(1, max_steps + 1),
        "loss": loss_sum / len(images),
        "accuracy": correct / len(images),
    }


def state_trajectories(model, images, max_steps):
    """The stage states of a study model for some images, step by step.

    Args:
        model: a model from `build_ablation_model`.
        images: array of images, shape `(n,) + input_shape`.
        max_steps: positive integer, the deepest unroll.

    Returns:
        A numpy array of shape `(n, max_steps + 1, units)`: `x(0)` (the
        stage input) to `x(max_steps)`.

    Example:

    >>> model = build_ablation_model("NAIS-Net", units=8, num_steps=3)
    >>> state_trajectories(model, np.zeros((2, 28, 28, 1)), 5).shape
    (2, 6, 8)
    """
    max_steps = _check_positive_int("max_steps", max_steps)
    u = _stage_input(model, np.asarray(images, "float32"))
    states, _ = stage_trajectory(model.get_layer("stage"), u, max_steps)
    return np.stack([ops.convert_to_numpy(s) for s in states], axis=1)


def step_matrix_radius(stage):
    """The largest `|eigenvalue|` of `I + step_size * A_k` over the layers.

    With `A_k = -(R_k^T R_k + epsilon I)` symmetric, this is the spectral
    radius of the step Jacobian where the activation has slope 1; the
    projection keeps it at most `1 - epsilon` for `step_size = 1`. Above 1
    the linearized stage amplifies some direction at every step.

    Args:
        stage: a built `NaisDenseBlock` or `AblationStage`.

    Returns:
        A Python float.

    Example:

    >>> stage = build_stage(8, "NAIS-Net", num_steps=3)
    >>> stage.build((None, 8))
    >>> step_matrix_radius(stage) <= 0.99 + 1e-6
    True
    """
    if isinstance(stage, NaisDenseBlock):
        matrices = [stage.state_matrix]
    elif isinstance(stage, AblationStage):
        matrices = [stage.state_matrix(i) for i in range(stage.num_weight_sets)]
    else:
        raise ValueError(
            "`stage` must be a NaisDenseBlock or an AblationStage. "
            f"Received: stage={stage!r}"
        )
    radius = 0.0
    for matrix in matrices:
        matrix = ops.convert_to_numpy(matrix).astype("float64")
        step = np.eye(len(matrix)) + stage.step_size * matrix
        radius = max(radius, float(np.max(np.abs(np.linalg.eigvalsh(step)))))
    return radius
