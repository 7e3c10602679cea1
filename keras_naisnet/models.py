"""Reference architectures for 32 x 32 images: NAIS-Net and ResNet baselines.

All models share one layout: a stem convolution, three stages of blocks
with 16, 32 and 64 filters (the first block of stages 2 and 3 halves the
resolution), global average pooling and a dense classifier that returns
logits. Inputs are float images in `[0, 1]` (what
`keras_naisnet.data.load_image_classification` yields).

A block of the NAIS family (`build_ablation_model`) is a residual recurrence
unrolled `num_steps` times,

    u    = relu(batch_norm(block input))          (input path, run once)
    d    = conv(u, D) + E                         (input term, run once)
    x(0) = block input (non-autonomous) or u (autonomous) where shapes
           allow, else 0 (non-autonomous) or d (autonomous)
    x(k+1) = x(k) + step_size * act(S_k(x(k)) [+ d if non-autonomous])

with `S_k` a 3 x 3 state convolution, optionally followed by batch norm.
Four flags of the paper's ablation choose the variant:

- `shared_weights` (SH): one `S` for every step instead of one per step;
- `non_autonomous` (NA): the input term `d` enters every step;
- `batch_norm` (BN): batch norm after each state convolution;
- `stable`: the state kernel is kept in the stable set of the
  convolutional NAIS condition by projection after each optimizer step.

NAIS-Net is SH + NA + stable without BN; that combination, and SH + NA
without projection, use `NaisConvBlock`, so the input term is computed once
per block and the block offers adaptive depth. The batch norm of the input
path sits outside the unrolled loop and does not touch the stability
analysis. `build_resnet` is the standard CIFAR ResNet of He et al. (2016):
untied weights, two convolutions per block, batch norm; with 3 blocks per
stage it is ResNet-20.

Named configurations (`MODELS`, used by the examples' `--model`):

- `"naisnet"`: NAIS-Net (SH + NA + stable), `NaisConvBlock` with
  `stability="projection"`.
- `"naisnet-unconstrained"`: the same without projection
  (`stability=None`): a shared-weight non-autonomous ResNet.
- `"resnet"`: the standard CIFAR ResNet (`build_resnet`).
- `"resnet-sh"`, `"resnet-na"`, `"resnet-sh-bn"`, `"resnet-na-bn"`,
  `"resnet-untied"`, `"resnet-sh-stable"`: further ablation variants of
  the NAIS family (see `MODELS` for their flags).
"""

import keras

from keras_naisnet.constraints import ConvStateProjection
from keras_naisnet.constraints import _check_epsilon
from keras_naisnet.constraints import _check_eta
from keras_naisnet.conv_block import NaisConvBlock
from keras_naisnet.initializers import ConvStateInitializer

STAGE_FILTERS = (16, 32, 64)
# Batch-norm moving averages forget at 10% per step (PyTorch's default)
# rather than Keras's 1%, so that short runs evaluate with settled
# statistics: with 0.99 the test loss after 30 steps was 9 (chance).
BN_MOMENTUM = 0.9

# Flags of the NAIS family per named model; "resnet" is the standard one.
MODELS = {
    "naisnet": dict(
        shared_weights=True, non_autonomous=True, batch_norm=False, stable=True
    ),
    "naisnet-unconstrained": dict(
        shared_weights=True,
        non_autonomous=True,
        batch_norm=False,
        stable=False,
    ),
    "resnet": None,
    "resnet-untied": dict(
        shared_weights=False,
        non_autonomous=False,
        batch_norm=False,
        stable=False,
    ),
    "resnet-sh": dict(
        shared_weights=True,
        non_autonomous=False,
        batch_norm=False,
        stable=False,
    ),
    "resnet-na": dict(
        shared_weights=False,
        non_autonomous=True,
        batch_norm=False,
        stable=False,
    ),
    "resnet-sh-bn": dict(
        shared_weights=True, non_autonomous=False, batch_norm=True, stable=False
    ),
    "resnet-na-bn": dict(
        shared_weights=False, non_autonomous=True, batch_norm=True, stable=False
    ),
    "resnet-sh-stable": dict(
        shared_weights=True, non_autonomous=False, batch_norm=False, stable=True
    ),
}


def _l2(weight_decay):
    # Keras's L2 adds `l2 * sum(w**2)`, whose gradient is `2 * l2 * w`: half
    # the coefficient gives the usual weight decay `weight_decay * w`.
    return keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None


def _check_common(num_steps, blocks_per_stage, num_classes, filters):
    for name, value in (
        ("num_steps", num_steps),
        ("blocks_per_stage", blocks_per_stage),
        ("num_classes", num_classes),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`{name}` must be a positive integer. "
                f"Received: {name}={value!r}"
            )
    if len(filters) < 1 or any(int(f) < 1 for f in filters):
        raise ValueError(
            "`filters` must be a non-empty sequence of positive integers. "
            f"Received: filters={filters!r}"
        )


def _stem(inputs, filters, weight_decay, use_bias, name):
    return keras.layers.Conv2D(
        filters,
        3,
        padding="same",
        use_bias=use_bias,
        kernel_initializer="he_normal",
        kernel_regularizer=_l2(weight_decay),
        name=f"{name}_stem",
    )(inputs)


def _head(x, num_classes, weight_decay, name):
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    return keras.layers.Dense(
        num_classes,
        kernel_regularizer=_l2(weight_decay),
        name=f"{name}_logits",
    )(x)


def _state_initializer(settings):
    # Off-centre taps inside the stability budget left by the centre, so a
    # plain Conv2D state kernel (projected only after the first optimizer
    # step) also starts in the stable set.
    centre = settings["state_centre"]
    budget = 1.0 - settings["epsilon"] - abs(1.0 + centre)
    return ConvStateInitializer(centre, off_centre_norm=min(0.5, budget))


def _nais_family_block(x, filters, strides, flags, settings, name):
    """One block of the NAIS family; see the module docstring."""
    num_steps = settings["num_steps"]
    step_size = settings["step_size"]
    activation = settings["activation"]
    same_shape = strides == 1 and x.shape[-1] == filters
    u = keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, name=f"{name}_input_bn"
    )(x)
    u = keras.layers.Activation("relu", name=f"{name}_input_relu")(u)
    shared = flags["shared_weights"]
    non_autonomous = flags["non_autonomous"]
    if shared and non_autonomous and not flags["batch_norm"]:
        block = NaisConvBlock(
            filters,
            kernel_size=3,
            strides=strides,
            num_steps=num_steps,
            step_size=step_size,
            epsilon=settings["epsilon"],
            eta=settings["eta"],
            activation=activation,
            stability="projection" if flags["stable"] else None,
            state_initializer=_state_initializer(settings),
            input_regularizer=_l2(settings["weight_decay"]),
            name=name,
        )
        # x(0) = block input: the un-normalized identity path of a
        # pre-activation residual network.
        return block(u, initial_state=x if same_shape else None)

    input_term = keras.layers.Conv2D(
        filters,
        3,
        strides=strides,
        padding="same",
        kernel_initializer="he_normal",
        kernel_regularizer=_l2(settings["weight_decay"]),
        name=f"{name}_input_conv",
    )(u)

    def state_conv(step):
        return keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            # Autonomous steps have no input term, so they carry a bias.
            use_bias=not non_autonomous and not flags["batch_norm"],
            kernel_initializer=_state_initializer(settings),
            kernel_constraint=(
                ConvStateProjection(settings["epsilon"], settings["eta"])
                if flags["stable"]
                else None
            ),
            name=f"{name}_state_conv" + ("" if shared else f"_{step}"),
        )

    def increment(z, step):
        z = keras.layers.Activation(activation, name=f"{name}_act_{step}")(z)
        if step_size != 1.0:
            z = keras.layers.Rescaling(step_size, name=f"{name}_h_{step}")(z)
        return z

    shared_conv = state_conv(0) if shared else None
    first = 0
    if same_shape and non_autonomous:
        # u enters every step, so the state can start from the raw input.
        state = x
    elif same_shape:
        # An autonomous block sees its input only through x(0): start from
        # the normalized path, or the block would have no normalization.
        state = u
    elif non_autonomous:
        # From x(0) = 0 the state term of the first step vanishes.
        state = increment(input_term, 0)
        first = 1
    else:
        # The input convolution is the projection shortcut.
        state = input_term
    for step in range(first, num_steps):
        conv = shared_conv if shared else state_conv(step)
        z = conv(state)
        if flags["batch_norm"]:
            z = keras.layers.BatchNormalization(
                momentum=BN_MOMENTUM, name=f"{name}_bn_{step}"
            )(z)
        if non_autonomous:
            z = keras.layers.Add(name=f"{name}_input_{step}")([z, input_term])
        state = keras.layers.Add(name=f"{name}_step_{step}")(
            [state, increment(z, step)]
        )
    return state


def build_ablation_model(
    shared_weights=True,
    non_autonomous=True,
    batch_norm=False,
    stable=True,
    num_classes=10,
    input_shape=(32, 32, 3),
    num_steps=3,
    blocks_per_stage=3,
    filters=STAGE_FILTERS,
    activation="tanh",
    step_size=1.0,
    epsilon=0.01,
    eta=0.1,
    state_centre=-1.0,
    weight_decay=5e-4,
    name=None,
):
    """Builds a model of the NAIS family from the four ablation flags.

    `shared_weights=True, non_autonomous=True, batch_norm=False,
    stable=True` is NAIS-Net. See the module docstring for the block.

    Args:
        shared_weights: one state convolution for every step of a block.
        non_autonomous: the block input term enters every step.
        batch_norm: batch norm after each state convolution (inside the
            unrolled loop).
        stable: keep each state kernel in the stable set by projection.
        num_classes: number of logits.
        input_shape: image shape, channels last.
        num_steps: unroll steps per block (NAIS-Net1 / NAIS-Net10 of the
            paper are 1 and 10).
        blocks_per_stage: blocks per stage.
        filters: filters of the stages; every stage after the first halves
            the resolution in its first block.
        activation: `"relu"` or `"tanh"` inside the steps.
        step_size: step size `h` in `(0, 1]`.
        epsilon: stability margin of the state kernels.
        eta: centre-tap margin of the state kernels.
        state_centre: float in `[-2 + eta, -eta]`, the initial value of
            every centre tap of the state kernels (`ConvStateInitializer`).
            The default -1 gives each block unit gain at its equilibrium;
            values nearer `-eta` contract the state more slowly, so more of
            `x(0)` survives the unrolled steps.
        weight_decay: decay of the stem, input convolutions and classifier
            kernels (an L2 penalty with gradient `weight_decay * w`); state
            kernels are not decayed, their centre taps sit at -1 by design.
        name: model name; defaults to one built from the flags.

    Returns:
        An uncompiled `keras.Model` mapping images to logits.

    Example:

    >>> model = build_ablation_model(num_steps=1, blocks_per_stage=1)
    >>> model.output.shape
    (None, 10)
    """
    _check_common(num_steps, blocks_per_stage, num_classes, filters)
    # The range of `state_centre` and the initial off-centre budget are
    # read from these, so they are checked first.
    epsilon = _check_epsilon(epsilon)
    eta = _check_eta(eta, epsilon)
    # The projection would clip a centre outside this range at the first
    # step; an unconstrained model could start there but then is no longer
    # a like-for-like ablation.
    if not -2.0 + eta <= float(state_centre) <= -eta:
        raise ValueError(
            "`state_centre` must lie in [-2 + eta, -eta] = "
            f"[{-2.0 + eta:g}, {-eta:g}]. "
            f"Received: state_centre={state_centre!r}"
        )
    flags = dict(
        shared_weights=bool(shared_weights),
        non_autonomous=bool(non_autonomous),
        batch_norm=bool(batch_norm),
        stable=bool(stable),
    )
    if name is None:
        name = "nais_family_" + "_".join(k for k, v in flags.items() if v)
    settings = dict(
        num_steps=num_steps,
        step_size=float(step_size),
        activation=activation,
        epsilon=epsilon,
        eta=eta,
        state_centre=float(state_centre),
        weight_decay=weight_decay,
    )
    inputs = keras.Input(input_shape, name="images")
    x = _stem(inputs, filters[0], weight_decay, True, "model")
    for stage, stage_filters in enumerate(filters):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _nais_family_block(
                x,
                stage_filters,
                strides,
                flags,
                settings,
                f"stage{stage + 1}_block{block + 1}",
            )
    # The last state is normalized like every block input.
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="head_bn")(x)
    x = keras.layers.Activation("relu", name="head_relu")(x)
    outputs = _head(x, num_classes, weight_decay, "model")
    return keras.Model(inputs, outputs, name=name)


def _resnet_block(x, filters, strides, weight_decay, name):
    def conv(y, size, stride, suffix):
        return keras.layers.Conv2D(
            filters,
            size,
            strides=stride,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=_l2(weight_decay),
            name=f"{name}_{suffix}",
        )(y)

    y = conv(x, 3, strides, "conv1")
    y = keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, name=f"{name}_bn1"
    )(y)
    y = keras.layers.Activation("relu", name=f"{name}_relu1")(y)
    y = conv(y, 3, 1, "conv2")
    y = keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, name=f"{name}_bn2"
    )(y)
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv(x, 1, strides, "shortcut")
        shortcut = keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, name=f"{name}_bn_short"
        )(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_relu2")(y)


def build_resnet(
    num_classes=10,
    input_shape=(32, 32, 3),
    blocks_per_stage=3,
    filters=STAGE_FILTERS,
    weight_decay=5e-4,
    name=None,
):
    """Builds the standard CIFAR ResNet (He et al., 2016).

    Stem convolution with batch norm and ReLU, then per stage
    `blocks_per_stage` basic blocks (two 3 x 3 convolutions with batch
    norm, identity shortcut, or a 1 x 1 convolution with batch norm where
    the shape changes), global average pooling and a dense classifier.
    The depth is `6 * blocks_per_stage + 2` for three stages (ResNet-20
    for 3 blocks per stage). Weights are untied: every block has its own.

    Args:
        num_classes: number of logits.
        input_shape: image shape, channels last.
        blocks_per_stage: basic blocks per stage.
        filters: filters of the stages.
        weight_decay: decay of every convolution and dense kernel.
        name: model name; defaults to `"resnet{depth}"`.

    Returns:
        An uncompiled `keras.Model` mapping images to logits.

    Example:

    >>> build_resnet(blocks_per_stage=3).name
    'resnet20'
    """
    _check_common(1, blocks_per_stage, num_classes, filters)
    depth = 2 * len(filters) * blocks_per_stage + 2
    inputs = keras.Input(input_shape, name="images")
    x = _stem(inputs, filters[0], weight_decay, False, "model")
    x = keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, name="model_stem_bn"
    )(x)
    x = keras.layers.Activation("relu", name="model_stem_relu")(x)
    for stage, stage_filters in enumerate(filters):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _resnet_block(
                x,
                stage_filters,
                strides,
                weight_decay,
                f"stage{stage + 1}_block{block + 1}",
            )
    outputs = _head(x, num_classes, weight_decay, "model")
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def build_naisnet(**kwargs):
    """Builds the default NAIS-Net (`build_model("naisnet", **kwargs)`).

    Args:
        **kwargs: arguments of `build_ablation_model` other than the flags.

    Returns:
        An uncompiled `keras.Model` mapping images to logits.

    Example:

    >>> build_naisnet(num_steps=1, blocks_per_stage=1).name
    'naisnet'
    """
    return build_model("naisnet", **kwargs)


def build_model(model="naisnet", num_steps=3, blocks_per_stage=3, **kwargs):
    """Builds a named architecture of `MODELS`.

    Args:
        model: one of `MODELS` (`"naisnet"`, `"naisnet-unconstrained"`,
            `"resnet"`, ...).
        num_steps: unroll steps per block (ignored by `"resnet"`, whose
            blocks are not unrolled).
        blocks_per_stage: blocks per stage.
        **kwargs: further arguments of `build_ablation_model` or
            `build_resnet` (`num_classes`, `input_shape`, `weight_decay`,
            ...).

    Returns:
        An uncompiled `keras.Model` named after `model` (dashes become
        underscores).

    Raises:
        ValueError: for an unknown `model`.

    Example:

    >>> build_model("resnet", num_classes=100).output.shape
    (None, 100)
    """
    if model not in MODELS:
        raise ValueError(
            f"`model` must be one of {tuple(MODELS)}. Received: model={model!r}"
        )
    name = kwargs.pop("name", model.replace("-", "_"))
    if MODELS[model] is None:
        for key in (
            "activation",
            "step_size",
            "epsilon",
            "eta",
            "state_centre",
        ):
            kwargs.pop(key, None)
        return build_resnet(
            blocks_per_stage=blocks_per_stage, name=name, **kwargs
        )
    return build_ablation_model(
        **MODELS[model],
        num_steps=num_steps,
        blocks_per_stage=blocks_per_stage,
        name=name,
        **kwargs,
    )
