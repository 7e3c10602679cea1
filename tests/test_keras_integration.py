"""The blocks as Keras citizens: config, saving, model APIs, symbolic use."""

import inspect

import keras
import numpy as np
import pytest

from keras_naisnet import NaisConvBlock
from keras_naisnet import NaisDenseBlock
from keras_naisnet import initializers

BLOCKS = {
    "dense": (
        lambda **kw: NaisDenseBlock(6, num_steps=3, **kw),
        (5,),
    ),
    "conv": (
        lambda **kw: NaisConvBlock(
            4, kernel_size=3, strides=2, num_steps=2, **kw
        ),
        (6, 6, 3),
    ),
}


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_config_round_trip_covers_every_argument(kind):
    make, _ = BLOCKS[kind]
    block = make(
        step_size=0.5,
        epsilon=0.05,
        activation="relu",
        stability="reparametrization",
        use_bias=False,
        max_steps=9,
        tol=1e-3,
        return_steps=True,
        input_regularizer="l2",
        name="custom",
    )
    config = block.get_config()
    restored = type(block).from_config(config)
    assert restored.get_config() == config
    serialized = keras.saving.serialize_keras_object(block)
    # Registered under the package name.
    assert (
        serialized["registered_name"] == f"keras_naisnet>{type(block).__name__}"
    )
    again = keras.saving.deserialize_keras_object(serialized)
    assert again.get_config() == config
    # Every constructor argument appears in the config.
    for cls in type(block).__mro__:
        if cls is keras.layers.Layer:
            break
        for name in inspect.signature(cls.__init__).parameters:
            if name not in ("self", "kwargs"):
                assert name in config, name


def test_conv_config_keeps_custom_state_initializer():
    block = NaisConvBlock(
        4,
        state_initializer=initializers.ConvStateInitializer(-0.8, 0.2, seed=3),
    )
    config = block.get_config()
    restored = NaisConvBlock.from_config(config)
    init = restored.state_initializer
    assert isinstance(init, initializers.ConvStateInitializer)
    assert (init.centre, init.off_centre_norm, init.seed) == (-0.8, 0.2, 3)


def _models(kind):
    make, shape = BLOCKS[kind]

    sequential = keras.Sequential([keras.Input(shape), make()])

    inputs = keras.Input(shape)
    functional = keras.Model(inputs, make()(inputs))

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.block = make()

        def call(self, x):
            return self.block(x)

    subclassed = Subclassed()
    return {
        "sequential": sequential,
        "functional": functional,
        "subclassed": subclassed,
    }, shape


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_model_apis_give_the_same_shapes(kind, rng):
    models, shape = _models(kind)
    x = rng.normal(size=(3,) + shape).astype("float32")
    expected = BLOCKS[kind][0]().compute_output_shape((3,) + shape)
    for name, model in models.items():
        output = model(x)
        assert tuple(output.shape) == tuple(expected), name
        model.compile("adam", "mse")
        model.fit(x, keras.ops.convert_to_numpy(output), epochs=1, verbose=0)


@pytest.mark.parametrize("kind", sorted(BLOCKS))
@pytest.mark.parametrize("stability", ["projection", "reparametrization", None])
def test_keras_file_round_trip(kind, stability, tmp_path, rng):
    make, shape = BLOCKS[kind]
    inputs = keras.Input(shape)
    state = make(stability=stability)(inputs)
    model = keras.Model(inputs, state)
    x = rng.normal(size=(4,) + shape).astype("float32")
    model.compile("sgd", "mse")
    model.fit(x, keras.ops.convert_to_numpy(model(x)) + 1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(reloaded(x)),
        keras.ops.convert_to_numpy(model(x)),
    )


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_symbolic_outputs_with_steps(kind):
    make, shape = BLOCKS[kind]
    inputs = keras.Input(shape)
    state, steps = make(return_steps=True, tol=1e-3)(inputs)
    assert steps.dtype == "int32"
    assert tuple(steps.shape) == (None,)
    assert state.dtype == "float32"
    model = keras.Model(inputs, {"state": state, "steps": steps})
    outputs = model.predict(np.ones((2,) + shape, "float32"), verbose=0)
    assert outputs["steps"].dtype == np.int32
    assert np.all(outputs["steps"] >= 1)


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_initial_state_call_argument(kind, rng):
    make, shape = BLOCKS[kind]
    block = make()
    x = rng.normal(size=(2,) + shape).astype("float32")
    zeros_start = block(x)
    start = rng.normal(size=zeros_start.shape).astype("float32")
    from_start = keras.ops.convert_to_numpy(block(x, initial_state=start))
    assert not np.allclose(from_start, keras.ops.convert_to_numpy(zeros_start))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(block(x, initial_state=start * 0)),
        keras.ops.convert_to_numpy(zeros_start),
        atol=1e-6,
    )


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_initial_state_of_the_wrong_shape_raises(kind, rng):
    make, shape = BLOCKS[kind]
    block = make()
    x = rng.normal(size=(2,) + shape).astype("float32")
    state_shape = block.compute_output_shape((2,) + shape)
    wrong = np.zeros(state_shape[:-1] + (state_shape[-1] + 1,), "float32")
    with pytest.raises(ValueError, match="Received: initial_state.shape="):
        block(x, initial_state=wrong)
