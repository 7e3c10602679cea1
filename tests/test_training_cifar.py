"""A small NAIS-Net learns on real CIFAR-10 images and stays stable."""

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_naisnet import NaisConvBlock
from keras_naisnet import NaisDenseBlock
from keras_naisnet import constraints


def _cifar_slice(data_dir, split):
    images, labels = tfds.as_numpy(
        tfds.load(
            "cifar10",
            split=split,
            data_dir=data_dir,
            download=False,
            as_supervised=True,
            batch_size=-1,
        )
    )
    return images.astype("float32") / 255.0, labels.astype("int32")


@pytest.mark.slow
def test_small_model_lowers_loss_and_keeps_conditions(tfds_data_dir):
    x, y = _cifar_slice(tfds_data_dir, "train[:1024]")
    assert x.shape == (1024, 32, 32, 3)
    conv1 = NaisConvBlock(8, num_steps=3, epsilon=0.01)
    conv2 = NaisConvBlock(16, strides=2, num_steps=3, epsilon=0.01)
    dense = NaisDenseBlock(16, num_steps=3, epsilon=0.05)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(8, 3, strides=2, padding="same"),
            conv1,
            conv2,
            keras.layers.GlobalAveragePooling2D(),
            dense,
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        keras.optimizers.Adam(learning_rate=3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = model.evaluate(x, y, batch_size=256, verbose=0)
    model.fit(x, y, batch_size=64, epochs=3, verbose=0)
    after = model.evaluate(x, y, batch_size=256, verbose=0)
    # Chance level is ln(10) = 2.30; three epochs on 1,024 images move the
    # training loss well below the starting value.
    assert np.isfinite(after)
    assert after < before - 0.05, (before, after)

    for block in (conv1, conv2):
        margins = constraints.conv_state_margins(block.state_kernel)
        gershgorin = keras.ops.convert_to_numpy(margins["gershgorin"])
        centre = keras.ops.convert_to_numpy(margins["centre"])
        assert np.all(gershgorin <= 1 - 0.01 + 1e-5)
        assert np.all(np.abs(1 + centre) <= 1 - 0.1 + 1e-6)
    factor = keras.ops.convert_to_numpy(dense.state_factor).astype(np.float64)
    assert np.linalg.norm(factor.T @ factor) <= 0.9 * (1 + 1e-5)
