"""NaisConvBlock against float64 numpy, and its stability guarantees."""

import keras
import numpy as np
import pytest

from keras_naisnet import NaisConvBlock
from keras_naisnet import constraints
from tests import reference

# Float32 convolutions over at most 3*3*6 taps, 5 steps: errors ~1e-6.
ATOL = 1e-4


def _numpy(x):
    return None if x is None else keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize(
    "strides, channels, initial_state",
    [(1, 4, "zeros"), (2, 3, "zeros"), (1, 4, "input")],
)
@pytest.mark.parametrize("stability", ["projection", "reparametrization"])
def test_matches_numpy_recurrence(
    activation, strides, channels, initial_state, stability, rng
):
    block = NaisConvBlock(
        4,
        kernel_size=3,
        strides=strides,
        num_steps=5,
        step_size=0.8,
        activation=activation,
        initial_state=initial_state,
        stability=stability,
    )
    u = rng.normal(size=(2, 7, 6, channels)).astype("float32")
    block.build(u.shape)
    block.set_weights(
        [
            rng.normal(size=w.shape).astype("float32") * 0.3
            for w in block.get_weights()
        ]
    )
    state_kernel = _numpy(block.state_kernel)
    if stability == "reparametrization":
        np.testing.assert_allclose(
            state_kernel,
            _numpy(constraints.project_conv_state(_numpy(block.weights[0]))),
            atol=1e-7,
        )
    expected = reference.conv_recurrence(
        u,
        state_kernel,
        _numpy(block.input_kernel),
        _numpy(block.bias),
        5,
        0.8,
        strides,
        activation,
        x0=u if initial_state == "input" else None,
    )
    output = _numpy(block(u))
    assert output.shape == expected.shape
    np.testing.assert_allclose(output, expected, atol=ATOL)


def test_output_shape_for_odd_sizes_and_stride():
    block = NaisConvBlock(5, strides=2, num_steps=1)
    output = block(np.zeros((1, 7, 9, 2), "float32"))
    assert tuple(output.shape) == (1, 4, 5, 5)
    assert block.compute_output_shape((None, 7, 9, 2)) == (None, 4, 5, 5)


def test_build_projects_and_default_init_has_unit_gain():
    block = NaisConvBlock(6, epsilon=0.01, eta=0.1)
    block.build((None, 8, 8, 3))
    margins = constraints.conv_state_margins(_numpy(block.state_kernel))
    # ConvStateInitializer: centre taps -1 and off-centre L1 0.5 per
    # channel, already inside the stable set, so build leaves them alone.
    np.testing.assert_allclose(_numpy(margins["centre"]), -1.0, atol=1e-6)
    np.testing.assert_allclose(
        _numpy(margins["off_centre_sum"]), 0.5, rtol=1e-5
    )


def test_tanh_block_converges_to_equilibrium(rng):
    # With tanh the equilibrium solves conv(X, C) + conv(U, D) + E = 0,
    # a linear system: X = -Cmat^-1 (input term).
    block = NaisConvBlock(3, num_steps=200, epsilon=0.1, eta=0.3)
    u = rng.normal(size=(1, 5, 5, 2)).astype("float32")
    block.build(u.shape)
    block.set_weights(
        [
            rng.normal(size=w.shape).astype("float32")
            for w in block.get_weights()
        ]
    )
    block.project()
    kernel = _numpy(block.state_kernel).astype(np.float64)
    input_term = reference.conv2d_same(u, _numpy(block.input_kernel))
    input_term = input_term + _numpy(block.bias)
    cmat = reference.conv_matrix(kernel, 5, 5)
    equilibrium = -np.linalg.solve(cmat, input_term.reshape(-1))
    for scale in [0.0, 3.0]:
        start = (rng.normal(size=(1, 5, 5, 3)) * scale).astype("float32")
        state = _numpy(block(u, initial_state=start))
        np.testing.assert_allclose(state.reshape(-1), equilibrium, atol=1e-4)


def test_projection_runs_after_optimizer_step(rng):
    block = NaisConvBlock(4, num_steps=2, epsilon=0.05, eta=0.2)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            block,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.SGD(learning_rate=1.0), "mse")
    x = rng.normal(size=(16, 6, 6, 2)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32") * 10
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    margins = constraints.conv_state_margins(_numpy(block.state_kernel))
    assert np.all(_numpy(margins["gershgorin"]) <= 0.95 + 1e-5)
    assert np.all(np.abs(1 + _numpy(margins["centre"])) <= 0.8 + 1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"filters": 0}, "filters"),
        ({"filters": 8.0}, "filters"),
        ({"filters": 8, "kernel_size": 4}, "kernel_size"),
        ({"filters": 8, "kernel_size": 0}, "kernel_size"),
        ({"filters": 8, "strides": 0}, "strides"),
        ({"filters": 8, "num_steps": -2}, "num_steps"),
        ({"filters": 8, "step_size": 2.0}, "step_size"),
        ({"filters": 8, "epsilon": 0.6}, "epsilon"),
        ({"filters": 8, "eta": 0.005}, "eta"),
        ({"filters": 8, "activation": "gelu"}, "activation"),
        ({"filters": 8, "stability": "clip"}, "stability"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"{message}.*Received: {message}="):
        NaisConvBlock(**kwargs)


@pytest.mark.parametrize(
    "kwargs, input_shape",
    [
        ({"initial_state": "input"}, (None, 8, 8, 3)),
        ({"initial_state": "input", "strides": 1}, (None, 8, 8, 5)),
    ],
)
def test_initial_state_input_needs_state_shape(kwargs, input_shape):
    block = NaisConvBlock(4, **kwargs)
    with pytest.raises(ValueError, match="initial_state='input'"):
        block.build(input_shape)


def test_initial_state_input_refuses_strides():
    with pytest.raises(ValueError, match="Received: strides=2"):
        NaisConvBlock(4, initial_state="input", strides=2)


def test_wrong_rank_and_channels_raise():
    block = NaisConvBlock(4)
    with pytest.raises(ValueError, match="ndim=4"):
        block(np.zeros((2, 8, 3), "float32"))
    block(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="axis -1"):
        block(np.zeros((1, 8, 8, 5), "float32"))
