"""Adaptive depth at inference (`tol`, `max_steps`, `return_steps`).

Step counts and step changes are checked against float64 NumPy
recurrences written from the block equations (`tests/reference.py`).
"""

import os

import keras
import numpy as np
import pytest

from keras_naisnet import NaisConvBlock
from keras_naisnet import NaisDenseBlock
from tests import reference
from tests.conftest import backend

# A float32 run and a float64 run of the same recurrence differ by a few
# ulps of the state per step; over tens of steps that stays below 1e-5 for
# states of order 1, so a step change is compared with `tol` to that slack.
SLACK = 1e-5


def _numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor), np.float64)


def _numpy_states(block, u, num_steps):
    """x(0), ..., x(num_steps) of a block in float64, shape (K+1, batch...)."""
    u = np.asarray(u, np.float64)
    act = reference.ACTIVATIONS[block.get_config()["activation"]]
    if isinstance(block, NaisDenseBlock):
        a = reference.dense_state_matrix(
            _numpy(block.state_factor), block.epsilon
        )
        input_term = u @ _numpy(block.input_kernel) + _numpy(block.bias)

        def state_term(x):
            return x @ a
    else:
        kernel = _numpy(block.state_kernel)
        input_term = reference.conv2d_same(
            u, _numpy(block.input_kernel), block.strides
        ) + _numpy(block.bias)

        def state_term(x):
            return reference.conv2d_same(x, kernel)

    x = u.copy() if block.initial_state == "input" else 0.0 * input_term
    states = [x]
    for _ in range(num_steps):
        x = x + block.step_size * act(state_term(x) + input_term)
        states.append(x)
    return np.stack(states)


def _rms(delta):
    return np.sqrt(np.mean(delta.reshape(delta.shape[0], -1) ** 2, axis=1))


def _dense(rng, **kwargs):
    block = NaisDenseBlock(6, epsilon=0.1, **kwargs)
    block(np.zeros((1, 4), "float32"))
    block.state_factor.assign(rng.normal(size=(6, 6)))
    block.project()
    return block


def _conv(rng, **kwargs):
    block = NaisConvBlock(3, epsilon=0.1, eta=0.3, **kwargs)
    block(np.zeros((1, 5, 5, 2), "float32"))
    block._state_variable.assign(rng.normal(scale=0.3, size=(3, 3, 3, 3)))
    block.project()
    return block


def _inputs(rng, shape):
    # Scales from tiny to large: small inputs settle in a few steps, large
    # ones saturate tanh and settle slowly or hit `max_steps`.
    scales = np.geomspace(1e-3, 30.0, shape[0]).reshape(
        (-1,) + (1,) * (len(shape) - 1)
    )
    return (rng.normal(size=shape) * scales).astype("float32")


@pytest.mark.parametrize(
    "make,shape,activation",
    [
        (_dense, (12, 4), "tanh"),
        (_dense, (12, 4), "relu"),
        (_conv, (8, 5, 5, 2), "tanh"),
    ],
)
def test_steps_are_bounded_and_early_stops_are_below_tol(
    rng, make, shape, activation
):
    tol, max_steps = 1e-3, 40
    block = make(
        rng,
        tol=tol,
        max_steps=max_steps,
        return_steps=True,
        activation=activation,
    )
    u = _inputs(rng, shape)
    state, steps = block(u)
    steps = keras.ops.convert_to_numpy(steps)
    assert steps.dtype == np.int32 and steps.shape == (shape[0],)
    assert np.all((steps >= 1) & (steps <= max_steps))
    early = steps < max_steps
    # The inputs are chosen so that both cases occur.
    assert early.any()
    states = _numpy_states(block, u, max_steps)
    changes = np.stack(
        [_rms(np.diff(states[:, i], axis=0)) for i in range(shape[0])]
    )
    for i, n in enumerate(steps):
        # Every step before the last one was above tol ...
        assert np.all(changes[i, : n - 1] > tol - SLACK), (i, n)
        if n < max_steps:
            # ... and the last step of an early stop is at most tol.
            assert changes[i, n - 1] <= tol + SLACK, (i, n)
        # The frozen state is x(n).
        np.testing.assert_allclose(
            _numpy(state)[i], states[n, i], atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize(
    "make,shape", [(_dense, (5, 4)), (_conv, (3, 5, 5, 2))]
)
def test_tol_zero_and_max_steps_num_steps_equal_fixed_depth(rng, make, shape):
    adaptive = make(rng, num_steps=7, tol=0.0, return_steps=True)
    fixed = adaptive.__class__.from_config(
        {**adaptive.get_config(), "tol": None, "return_steps": False}
    )
    u = _inputs(rng, shape)
    fixed(u)
    fixed.set_weights(adaptive.get_weights())
    state, steps = adaptive(u)
    np.testing.assert_allclose(_numpy(state), _numpy(fixed(u)), atol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(steps), 7)


def _adaptive_model(rng, max_steps=30):
    inputs = keras.Input((4,))
    state, steps = NaisDenseBlock(
        6, num_steps=4, tol=1e-3, max_steps=max_steps, return_steps=True
    )(inputs)
    logits = keras.layers.Dense(3, name="logits")(state)
    return keras.Model(inputs, {"logits": logits, "steps": steps})


def test_return_steps_in_predict_and_training_uses_num_steps(rng):
    model = _adaptive_model(rng)
    u = _inputs(rng, (16, 4))
    out = model.predict(u, batch_size=8, verbose=0)
    assert out["logits"].shape == (16, 3)
    assert out["steps"].dtype == np.int32 and out["steps"].shape == (16,)
    assert out["steps"].max() > 4
    # training=True always unrolls num_steps, on every backend.
    block = model.layers[1]
    train_state, train_steps = block(u, training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(train_steps), 4)
    expected = _numpy_states(block, u, 4)[-1]
    np.testing.assert_allclose(_numpy(train_state), expected, atol=1e-5)
    # fit trains through the fixed loop, also on JAX.
    model.compile(
        "sgd",
        loss={
            "logits": keras.losses.SparseCategoricalCrossentropy(
                from_logits=True
            ),
            "steps": None,
        },
    )
    history = model.fit(
        u, {"logits": np.arange(16) % 3}, epochs=1, verbose=0, batch_size=8
    )
    assert np.isfinite(history.history["loss"][0])


def test_nan_inputs_run_to_max_steps(rng):
    model = _adaptive_model(rng, max_steps=60)
    u = rng.normal(size=(6, 4)).astype("float32")
    u[2] = np.nan
    steps = model.predict(u, verbose=0)["steps"]
    # The NaN sample never counts as settled; the others are unaffected.
    assert steps[2] == 60
    assert np.all(steps[[0, 1, 3, 4, 5]] < 60)


def test_adaptive_model_saves_and_reloads(rng, tmp_path):
    model = _adaptive_model(rng)
    u = _inputs(rng, (8, 4))
    path = tmp_path / "adaptive.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    expected, out = model.predict(u, verbose=0), reloaded.predict(u, verbose=0)
    np.testing.assert_allclose(out["logits"], expected["logits"], atol=1e-6)
    np.testing.assert_array_equal(out["steps"], expected["steps"])


def test_adaptive_model_exports_to_saved_model(rng, tmp_path):
    if backend() == "torch":
        pytest.skip(
            "model.export writes a TensorFlow SavedModel only from the "
            "tensorflow and jax backends"
        )
    import tensorflow as tf

    inputs = keras.Input((5, 5, 2))
    state, steps = NaisConvBlock(
        3, num_steps=3, tol=1e-3, max_steps=40, return_steps=True
    )(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(state)
    model = keras.Model(inputs, [keras.layers.Dense(2)(pooled), steps])
    u = _inputs(rng, (6, 5, 5, 2))
    logits, expected_steps = model.predict(u, verbose=0)
    assert len(set(expected_steps.tolist())) > 1
    kwargs = {}
    if backend() == "jax":
        # jax2tf cannot differentiate the data-dependent while loop.
        kwargs["jax2tf_kwargs"] = {"with_gradient": False}
    path = os.fspath(tmp_path / "saved_model")
    model.export(path, verbose=False, **kwargs)
    loaded = tf.saved_model.load(path)
    served = loaded.serve(tf.constant(u))
    np.testing.assert_allclose(served[0].numpy(), logits, atol=1e-6)
    np.testing.assert_array_equal(served[1].numpy(), expected_steps)
    if backend() == "tensorflow":
        layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
        out = layer(u)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(out[1]), expected_steps
        )
