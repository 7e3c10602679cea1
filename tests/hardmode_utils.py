"""Tiny models and checks shared by the hard-mode tests.

The hard-mode tests (XLA, mixed precision, several devices, export, bad
input, faults, repair) all train or run the same two small models, sized so
that every backend finishes them in seconds on one CPU core: 8 x 8 images
with 4 channels and a 2-step unroll for the conv block, 5 inputs and 4
units for the dense block.
"""

import keras
import numpy as np

import keras_naisnet
from keras_naisnet import NaisConvBlock
from keras_naisnet import NaisDenseBlock

BLOCK_KINDS = ("dense", "conv")
# "both": a conv block, global pooling, then a dense block; one model for
# the tests where compiling two models would cost most of the time.
IMAGE_SHAPE = (8, 8, 4)
DENSE_INPUT_DIM = 5


def make_inputs(kind, batch=16, seed=0):
    """Returns float32 inputs and integer labels (4 classes) for `kind`."""
    rng = np.random.default_rng(seed)
    shape = (DENSE_INPUT_DIM,) if kind == "dense" else IMAGE_SHAPE
    x = rng.normal(size=(batch,) + shape).astype("float32")
    y = rng.integers(0, 4, size=(batch,)).astype("int32")
    return x, y


def make_model(kind, num_steps=2, **block_kwargs):
    """A classifier around the NAIS block(s) of the given kind.

    The blocks' output goes through a plain `Dense(4)` head, so training
    moves the state weights through the loss. The (first) block is named
    `"block"`.
    """
    if kind == "both":
        layers = [
            keras.Input(IMAGE_SHAPE),
            NaisConvBlock(4, num_steps=num_steps, name="block", **block_kwargs),
            keras.layers.GlobalAveragePooling2D(),
            NaisDenseBlock(
                4, num_steps=num_steps, name="dense_block", **block_kwargs
            ),
        ]
    elif kind == "conv":
        layers = [
            keras.Input(IMAGE_SHAPE),
            NaisConvBlock(4, num_steps=num_steps, name="block", **block_kwargs),
            keras.layers.GlobalAveragePooling2D(),
        ]
    else:
        layers = [
            keras.Input((DENSE_INPUT_DIM,)),
            NaisDenseBlock(
                4, num_steps=num_steps, name="block", **block_kwargs
            ),
        ]
    return keras.Sequential(layers + [keras.layers.Dense(4, name="head")])


def compile_for_training(model, jit_compile=False, learning_rate=0.5):
    """SGD with a step large enough to push weights against the bound."""
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def stability_passed(model):
    """Whether every NAIS block of `model` meets its conditions."""
    return keras_naisnet.stability.check(model).passed


def weights_as_numpy(model):
    return [np.asarray(w, dtype=np.float64) for w in model.get_weights()]


def max_weight_difference(a, b):
    """Largest absolute difference between two lists of weight arrays."""
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
