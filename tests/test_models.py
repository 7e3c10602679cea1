"""The CIFAR architectures: sizes, shapes, serialization and stability."""

import re

import keras
import numpy as np
import pytest

from keras_naisnet import NaisConvBlock
from keras_naisnet import constraints
from keras_naisnet import models
from keras_naisnet import stability
from tests import reference
from tests.conftest import backend

SMALL = dict(input_shape=(8, 8, 3), blocks_per_stage=1, num_steps=2)
# One model per code path: NaisConvBlock with and without projection, the
# standard ResNet, the generic unrolled block with batch norm inside the
# steps, and with the projection constraint on a Conv2D kernel.
SERIALIZED = [
    "naisnet",
    "naisnet-unconstrained",
    "resnet",
    "resnet-na-bn",
    "resnet-sh-stable",
]


def _conv(k, c_in, c_out, bias=True):
    return k * k * c_in * c_out + (c_out if bias else 0)


def _bn(c):
    # gamma, beta, moving mean, moving variance.
    return 4 * c


def test_naisnet_parameter_count_by_hand():
    # Stem 3->16 with bias; per NAIS block: input batch norm, state kernel
    # C (c x c), input kernel D (c_in x c) and bias E; head batch norm and
    # dense 64 -> 10. Shared weights: the count does not depend on K.
    expected = (
        _conv(3, 3, 16)
        + _bn(16) + _conv(3, 16, 16, False) + _conv(3, 16, 16)
        + _bn(16) + _conv(3, 32, 32, False) + _conv(3, 16, 32)
        + _bn(32) + _conv(3, 64, 64, False) + _conv(3, 32, 64)
        + _bn(64) + 64 * 10 + 10
    )  # fmt: skip
    assert expected == 75_450
    for num_steps in (1, 4):
        model = models.build_model(
            "naisnet", num_steps=num_steps, blocks_per_stage=1
        )
        assert model.count_params() == expected


def test_resnet20_parameter_count_by_hand():
    def block(c_in, c):
        count = _conv(3, c_in, c, False) + _conv(3, c, c, False) + 2 * _bn(c)
        if c_in != c:
            count += _conv(1, c_in, c, False) + _bn(c)
        return count

    expected = (
        _conv(3, 3, 16, False) + _bn(16)
        + 3 * block(16, 16)
        + block(16, 32) + 2 * block(32, 32)
        + block(32, 64) + 2 * block(64, 64)
        + 64 * 10 + 10
    )  # fmt: skip
    assert expected == 274_042
    model = models.build_model("resnet", blocks_per_stage=3)
    assert model.name == "resnet"
    assert model.count_params() == expected
    assert models.build_resnet().name == "resnet20"


def test_untied_autonomous_parameter_count_by_hand():
    # Same-shape blocks start from u and need no input convolution; the
    # others start from the input convolution. Each of the K untied state
    # convolutions carries a bias (no input term, no batch norm).
    k = 2
    expected = (
        _conv(3, 3, 16)
        + _bn(16) + k * _conv(3, 16, 16)
        + _bn(16) + _conv(3, 16, 32) + k * _conv(3, 32, 32)
        + _bn(32) + _conv(3, 32, 64) + k * _conv(3, 64, 64)
        + _bn(64) + 64 * 10 + 10
    )  # fmt: skip
    model = models.build_model("resnet-untied", num_steps=k, blocks_per_stage=1)
    assert model.count_params() == expected


@pytest.mark.parametrize("name", SERIALIZED)
def test_output_shape_and_save_reload(name, tmp_path, rng):
    model = models.build_model(name, num_classes=7, **SMALL)
    x = rng.uniform(size=(2, 8, 8, 3)).astype("float32")
    logits = keras.ops.convert_to_numpy(model(x))
    assert model.output.shape == (None, 7)
    assert logits.shape == (2, 7)
    assert np.all(np.isfinite(logits))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(reloaded(x)), logits
    )


@pytest.mark.parametrize(
    "flags",
    [
        dict(shared_weights=s, non_autonomous=n, batch_norm=b, stable=t)
        for s in (False, True)
        for n in (False, True)
        for b in (False, True)
        for t in (False, True)
    ],
    ids=lambda f: "-".join(k for k, v in f.items() if v) or "none",
)
def test_every_flag_combination(flags):
    def count(num_steps):
        return models.build_ablation_model(
            **flags,
            num_classes=5,
            input_shape=(8, 8, 3),
            blocks_per_stage=1,
            num_steps=num_steps,
        )

    model = count(2)
    logits = model(np.zeros((2, 8, 8, 3), "float32"))
    assert tuple(logits.shape) == (2, 5)
    uses_block = any(isinstance(x, NaisConvBlock) for x in model.layers)
    assert uses_block == (
        flags["shared_weights"]
        and flags["non_autonomous"]
        and not flags["batch_norm"]
    )
    # Shared weights: depth adds no parameters; untied: each step adds a
    # state convolution (and a batch norm when asked).
    grows = count(3).count_params() - model.count_params()
    if flags["shared_weights"]:
        assert grows == (sum(_bn(c) for c in (16, 32, 64))
                         if flags["batch_norm"] else 0)  # fmt: skip
    else:
        bias = not flags["non_autonomous"] and not flags["batch_norm"]
        per_step = sum(
            _conv(3, c, c, bias) + (_bn(c) if flags["batch_norm"] else 0)
            for c in (16, 32, 64)
        )
        assert grows == per_step


@pytest.mark.parametrize("name", ["naisnet", "resnet-na"])
def test_first_block_starts_from_its_raw_input(name, rng):
    # The first block keeps its shape, so its state starts from the block
    # input (the stem output) itself, not from the normalized input path
    # u = relu(batch_norm(input)) that feeds its input convolution. Both
    # code paths (NaisConvBlock and the generic unrolled block) are checked
    # against the float64 recurrence.
    model = models.build_model(
        name, input_shape=(6, 6, 3), blocks_per_stage=1, num_steps=2
    )
    block = "stage1_block1"
    probe = keras.Model(
        model.input,
        [
            model.get_layer("model_stem").output,
            model.get_layer(f"{block}_input_relu").output,
            model.get_layer(block).output
            if name == "naisnet"
            else model.get_layer(f"{block}_step_1").output,
        ],
    )
    images = rng.uniform(size=(2, 6, 6, 3)).astype("float32")
    x0, u, output = (_np(t) for t in probe(images))
    if name == "naisnet":
        layer = model.get_layer(block)
        state_kernels = [_np(layer.state_kernel)] * 2
        input_kernel, bias = _np(layer.input_kernel), _np(layer.bias)
    else:
        state_kernels = [
            _np(model.get_layer(f"{block}_state_conv_{k}").kernel)
            for k in range(2)
        ]
        conv = model.get_layer(f"{block}_input_conv")
        input_kernel, bias = _np(conv.kernel), _np(conv.bias)
    u64 = u.astype(np.float64)
    input_term = reference.conv2d_same(u64, input_kernel) + bias

    def unroll(state):
        for kernel in state_kernels:
            step = reference.conv2d_same(state, kernel) + input_term
            state = state + np.tanh(step)
        return state

    expected = unroll(x0.astype(np.float64))
    # float32 against float64 over two tanh steps of O(1) values.
    np.testing.assert_allclose(output, expected, atol=1e-4)
    # The stem output has negative entries that the ReLU of u removes, so
    # a start from u would give a different state.
    assert np.max(np.abs(unroll(u64) - expected)) > 1e-2


def test_every_named_model_builds():
    for name, flags in models.MODELS.items():
        model = models.build_model(name, num_classes=7, **SMALL)
        assert model.output.shape == (None, 7), name
        if flags is not None:
            same = models.build_ablation_model(**flags, num_classes=7, **SMALL)
            assert model.count_params() == same.count_params(), name


def test_naisnet_blocks_use_the_flags():
    model = models.build_model("naisnet", **SMALL)
    blocks = [x for x in model.layers if isinstance(x, NaisConvBlock)]
    assert [b.strides for b in blocks] == [1, 2, 2]
    assert [b.filters for b in blocks] == [16, 32, 64]
    assert all(b.stability == "projection" for b in blocks)
    assert all(b.num_steps == 2 for b in blocks)
    free = models.build_model("naisnet-unconstrained", **SMALL)
    blocks = [x for x in free.layers if isinstance(x, NaisConvBlock)]
    assert all(b.stability is None for b in blocks)


def _np(x):
    # Through the backend tensor: numpy's `__array__` protocol on a Keras
    # variable raises a DeprecationWarning.
    if isinstance(x, keras.Variable):
        x = x.value
    return keras.ops.convert_to_numpy(x)


def _state_kernels(model):
    """The state kernels that must satisfy the conv condition."""
    kernels = []
    for layer in model.layers:
        if isinstance(layer, NaisConvBlock):
            kernels.append((layer, layer.state_kernel, layer.eta))
        elif isinstance(layer, keras.layers.Conv2D) and isinstance(
            layer.kernel_constraint, constraints.ConvStateProjection
        ):
            kernels.append((layer, layer.kernel, layer.kernel_constraint.eta))
    return kernels


def _assert_conditions(model, epsilon=0.01):
    kernels = _state_kernels(model)
    assert kernels
    for layer, kernel, eta in kernels:
        margins = constraints.conv_state_margins(_np(kernel), epsilon, eta)
        gershgorin = keras.ops.convert_to_numpy(margins["gershgorin"])
        centre = keras.ops.convert_to_numpy(margins["centre"])
        # The projection lands on the bound up to float32 rounding.
        assert np.all(gershgorin <= 1 - epsilon + 1e-5), layer.name
        assert np.all(np.abs(1 + centre) <= 1 - eta + 1e-5), layer.name


def _fit_step(model, rng, batch=8, steps=1):
    x = rng.uniform(size=(batch * steps, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 10, size=(batch * steps,))
    # A large learning rate pushes the state kernels out of the stable
    # set, so the projection has something to do.
    model.compile(
        optimizer=keras.optimizers.SGD(5.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)


@pytest.mark.parametrize("name", ["naisnet", "resnet-sh-stable"])
def test_conditions_hold_after_a_training_step(name, rng):
    model = models.build_model(name, **SMALL)
    _assert_conditions(model)
    before = [_np(k) for _, k, _ in _state_kernels(model)]
    _fit_step(model, rng)
    after = [_np(k) for _, k, _ in _state_kernels(model)]
    # The test can only conclude if training moved the state kernels.
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    _assert_conditions(model)
    if name == "naisnet":
        assert stability.check(model).passed


def test_mirrored_strategy_keeps_conditions(rng):
    if backend() != "tensorflow":
        pytest.skip("tf.distribute.MirroredStrategy needs TensorFlow.")
    import tensorflow as tf

    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "conftest should configure two logical CPUs"
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = models.build_model("naisnet", **SMALL)
        before = [_np(k) for _, k, _ in _state_kernels(model)]
        _fit_step(model, rng, batch=8, steps=3)
    after = [_np(k) for _, k, _ in _state_kernels(model)]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    _assert_conditions(model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model="vgg"), "Received: model='vgg'"),
        (dict(num_steps=0), "Received: num_steps=0"),
        (dict(blocks_per_stage=-1), "Received: blocks_per_stage=-1"),
        (dict(num_classes=0), "Received: num_classes=0"),
        (dict(model="resnet", filters=()), "Received: filters=()"),
        (dict(state_centre=0.0), "[-1.9, -0.1]. Received: state_centre=0.0"),
        # Named as itself, not as a `state_centre` outside an empty range.
        (dict(eta=1.5), "(0.01, 1). Received: eta=1.5"),
        (dict(epsilon=0.6), "(0, 0.5). Received: epsilon=0.6"),
        (
            dict(state_centre=-1.95),
            "[-1.9, -0.1]. Received: state_centre=-1.95",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        models.build_model(**kwargs)


@pytest.mark.parametrize("name", ["naisnet", "resnet-sh-stable"])
def test_state_centre_sets_every_centre_tap(name):
    # Both code paths (NaisConvBlock and the Conv2D state convolution) start
    # with every centre tap at the requested value and the off-centre taps
    # inside the stability budget: the projection would leave them as is.
    model = models.build_model(name, state_centre=-0.5, **SMALL)
    kernels = _state_kernels(model)
    assert kernels
    for _, kernel, eta in kernels:
        k = _np(kernel)
        centre = np.diagonal(k[1, 1])
        np.testing.assert_array_equal(centre, np.full_like(centre, -0.5))
        projected = _np(constraints.project_conv_state(k, 0.01, eta))
        np.testing.assert_allclose(projected, k, rtol=0, atol=1e-7)
