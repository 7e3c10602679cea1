"""NaisDenseBlock against float64 numpy, and its stability guarantees."""

import keras
import numpy as np
import pytest

from keras_naisnet import NaisDenseBlock
from keras_naisnet import NaisStabilityWarning
from tests import reference

# Float32 recurrences of up to 10 steps on values of order 1: the rounding
# error stays below 1e-5; 1e-4 leaves a margin for backend kernels.
ATOL = 1e-4


def _block_weights(block):
    return (
        keras.ops.convert_to_numpy(block.state_factor),
        keras.ops.convert_to_numpy(block.input_kernel),
        None if block.bias is None else keras.ops.convert_to_numpy(block.bias),
    )


def _set_random_weights(block, rng, scale=1.0):
    weights = [
        rng.normal(size=w.shape).astype("float32") * scale
        for w in block.get_weights()
    ]
    block.set_weights(weights)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("initial_state", ["zeros", "input"])
@pytest.mark.parametrize("stability", ["projection", "reparametrization", None])
def test_matches_numpy_recurrence(activation, initial_state, stability, rng):
    units = 5
    block = NaisDenseBlock(
        units,
        num_steps=7,
        step_size=0.7,
        epsilon=0.05,
        activation=activation,
        initial_state=initial_state,
        stability=stability,
    )
    u = rng.normal(size=(3, units)).astype("float32")
    block.build(u.shape)
    _set_random_weights(block, rng, scale=0.5)
    factor, input_kernel, bias = _block_weights(block)
    if stability == "reparametrization":
        # The stored R is mapped into the stable set inside call.
        norm = np.linalg.norm(factor.T.astype(np.float64) @ factor)
        factor = factor * min(1.0, np.sqrt(0.9 / norm))
    expected = reference.dense_recurrence(
        u,
        factor,
        input_kernel,
        bias,
        7,
        0.7,
        0.05,
        activation,
        x0=u if initial_state == "input" else None,
    )
    output = keras.ops.convert_to_numpy(block(u))
    np.testing.assert_allclose(output, expected, atol=ATOL)


def test_state_matrix_property(rng):
    block = NaisDenseBlock(4, epsilon=0.02, stability="reparametrization")
    block.build((None, 3))
    block.state_factor.assign(rng.normal(size=(4, 4)).astype("float32") * 3)
    factor = keras.ops.convert_to_numpy(block.state_factor)
    norm = np.linalg.norm(factor.T.astype(np.float64) @ factor)
    factor = factor * np.sqrt(0.96 / norm)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(block.state_matrix),
        reference.dense_state_matrix(factor, 0.02),
        atol=1e-5,
    )


def test_build_projects_initial_weights():
    # The default orthogonal R has ||R^T R||_F = sqrt(units) > 1 - 2 eps:
    # after build the norm sits on 1 - 2 eps with equal eigenvalues.
    block = NaisDenseBlock(16, epsilon=0.01)
    block.build((None, 8))
    factor = keras.ops.convert_to_numpy(block.state_factor).astype(np.float64)
    gram = factor.T @ factor
    np.testing.assert_allclose(np.linalg.norm(gram), 0.98, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.eigvalsh(gram), 0.98 / 4.0, rtol=1e-4)


def test_projection_runs_after_optimizer_step(rng):
    block = NaisDenseBlock(6, num_steps=3, epsilon=0.05)
    model = keras.Sequential([keras.Input((4,)), block, keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(learning_rate=0.5), "mse")
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32") * 3
    before = keras.ops.convert_to_numpy(block.state_factor).copy()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    factor = keras.ops.convert_to_numpy(block.state_factor).astype(np.float64)
    assert not np.allclose(factor, before)  # the weights did move
    assert np.linalg.norm(factor.T @ factor) <= 0.9 * (1 + 1e-5)


def test_project_method_repairs_weights(rng):
    block = NaisDenseBlock(5, epsilon=0.1)
    block.build((None, 2))
    block.state_factor.assign(rng.normal(size=(5, 5)).astype("float32") * 10)
    block.project()
    factor = keras.ops.convert_to_numpy(block.state_factor).astype(np.float64)
    eigenvalues = np.linalg.eigvalsh(
        np.eye(5) + reference.dense_state_matrix(factor, 0.1)
    )
    assert eigenvalues.min() >= 0.1 - 1e-6
    assert eigenvalues.max() <= 0.9 + 1e-6


def test_tanh_block_converges_to_unique_equilibrium(rng):
    units, epsilon = 4, 0.1
    block = NaisDenseBlock(units, num_steps=300, epsilon=epsilon)
    u = rng.normal(size=(2, 3)).astype("float32")
    block.build(u.shape)
    block.state_factor.assign(rng.normal(size=(units, units)).astype("float32"))
    block.input_kernel.assign(rng.normal(size=(3, units)).astype("float32"))
    block.bias.assign(rng.normal(size=(units,)).astype("float32") * 0.1)
    block.project()
    factor, input_kernel, bias = _block_weights(block)
    factor = factor.astype(np.float64)
    # tanh(z) = 0 only at z = 0: x A + u B + b = 0.
    m = factor.T @ factor + epsilon * np.eye(units)
    equilibrium = (u @ input_kernel + bias) @ np.linalg.inv(m)
    # The slowest mode contracts by at most 1 - epsilon per step near the
    # equilibrium: 0.9**300 ~ 2e-14, so float32 rounding dominates.
    for start in [np.zeros((2, units)), rng.normal(size=(2, units)) * 5]:
        state = block(u, initial_state=start.astype("float32"))
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(state), equilibrium, atol=1e-4
        )


def test_relu_trajectories_never_separate(rng):
    units, epsilon = 6, 0.05
    block = NaisDenseBlock(
        units, num_steps=1, epsilon=epsilon, activation="relu"
    )
    u = rng.normal(size=(1, units)).astype("float32")
    block.build(u.shape)
    block.state_factor.assign(rng.normal(size=(units, units)).astype("float32"))
    block.project()
    factor = keras.ops.convert_to_numpy(block.state_factor).astype(np.float64)
    m = factor.T @ factor + epsilon * np.eye(units)

    def distance(x, y):
        d = (x - y).astype(np.float64)[0]
        return np.sqrt(d @ m @ d)

    x = rng.normal(size=(1, units)).astype("float32") * 3
    y = rng.normal(size=(1, units)).astype("float32") * 3
    distances = [distance(x, y)]
    for _ in range(40):
        x = keras.ops.convert_to_numpy(block(u, initial_state=x))
        y = keras.ops.convert_to_numpy(block(u, initial_state=y))
        distances.append(distance(x, y))
    steps = np.diff(distances)
    # Non-increasing up to float32 rounding of the states.
    assert np.all(steps <= 1e-5 * distances[0])
    assert distances[-1] < distances[0]


def test_steps_output_in_fixed_mode():
    block = NaisDenseBlock(3, num_steps=4, return_steps=True)
    state, steps = block(np.ones((5, 2), "float32"))
    assert tuple(state.shape) == (5, 3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(steps), [4] * 5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"units": 0}, "units"),
        ({"units": 2.5}, "units"),
        ({"units": True}, "units"),
        ({"units": 4, "num_steps": 0}, "num_steps"),
        ({"units": 4, "num_steps": 3.0}, "num_steps"),
        ({"units": 4, "step_size": 0.0}, "step_size"),
        ({"units": 4, "step_size": 1.5}, "step_size"),
        ({"units": 4, "epsilon": 0.0}, "epsilon"),
        ({"units": 4, "epsilon": 0.5}, "epsilon"),
        ({"units": 4, "activation": "sigmoid"}, "activation"),
        ({"units": 4, "stability": "spectral"}, "stability"),
        ({"units": 4, "initial_state": "ones"}, "initial_state"),
        ({"units": 4, "max_steps": -1}, "max_steps"),
        ({"units": 4, "tol": -1e-3}, "tol"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"{message}.*Received: {message}="):
        NaisDenseBlock(**kwargs)


def test_unsupported_activation_needs_opt_out():
    with pytest.warns(NaisStabilityWarning, match="sigmoid"):
        block = NaisDenseBlock(
            3, activation="sigmoid", allow_any_activation=True
        )
    assert block.get_config()["allow_any_activation"] is True
    # Without the guarantee there is nothing to opt out of.
    NaisDenseBlock(3, activation="sigmoid", stability=None)


def test_initial_state_input_needs_matching_shape():
    block = NaisDenseBlock(4, initial_state="input")
    with pytest.raises(ValueError, match="initial_state='input'"):
        block.build((None, 3))


def test_wrong_input_rank_raises():
    block = NaisDenseBlock(4)
    with pytest.raises(ValueError, match="ndim=2"):
        block(np.zeros((2, 3, 4), "float32"))
