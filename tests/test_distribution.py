"""Training on several devices: the same weights as on one device.

`tests/conftest.py` gives TensorFlow two logical CPU devices and JAX two
host devices (`XLA_FLAGS=--xla_force_host_platform_device_count=2`), so
data parallelism runs on a machine without accelerators. Each test trains
one model on two devices and one on a single device from the same initial
weights on the same batches, and compares the weights afterwards.

The torch backend has no Keras distribution API (`tf.distribute` is
TensorFlow's, `keras.distribution` is JAX's in Keras 3.15), so it skips.
"""

import keras
import numpy as np
import pytest

from tests import hardmode_utils as hm

# Each replica computes the gradient of half the batch and the replicas
# average them; the sums run in another order than on one device, which
# changes float32 results by a few ulps per step. Two SGD steps with a
# learning rate of 0.5 stay well below 1e-5.
WEIGHT_ATOL = 1e-5


def _train_single_device(kind, initial):
    model = hm.make_model(kind)
    model.set_weights(initial)
    hm.compile_for_training(model)
    x, y = hm.make_inputs(kind)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return hm.weights_as_numpy(model)


def _check_same_training(kind, distributed, initial):
    expected = _train_single_device(kind, initial)
    actual = hm.weights_as_numpy(distributed)
    moved = hm.max_weight_difference(actual, [np.float64(w) for w in initial])
    assert moved > 1e-3, "training did not move the weights"
    assert hm.max_weight_difference(actual, expected) < WEIGHT_ATOL
    assert hm.stability_passed(distributed)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.distribute.MirroredStrategy needs the TensorFlow backend.",
)
def test_mirrored_strategy_matches_one_device():
    kind = "both"
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) >= 2, (
        "conftest.py should have split the CPU into two logical devices"
    )
    initial = hm.make_model(kind).get_weights()
    # On CPUs MirroredStrategy all-reduces with collective ops by default;
    # a second such strategy in the same process reuses the collective
    # instance keys of the first, whose gradient shapes then clash
    # (TensorFlow 2.21). Reducing on one device has no such keys.
    strategy = tf.distribute.MirroredStrategy(
        devices[:2], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    with strategy.scope():
        model = hm.make_model(kind)
        model.set_weights(initial)
        hm.compile_for_training(model)
    assert model.distribute_strategy.num_replicas_in_sync == 2
    x, y = hm.make_inputs(kind)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    _check_same_training(kind, model, initial)


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras.distribution.DataParallel needs the JAX backend.",
)
def test_jax_data_parallel_matches_one_device():
    kind = "both"
    import jax

    devices = jax.devices("cpu")
    assert len(devices) >= 2, (
        "conftest.py should set XLA_FLAGS for two host devices"
    )
    initial = hm.make_model(kind).get_weights()
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices[:2])
    )
    try:
        model = hm.make_model(kind)
        model.set_weights(initial)
        hm.compile_for_training(model)
        x, y = hm.make_inputs(kind)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        # The variables are replicated on both devices.
        kernel = model.get_layer("block").input_kernel.value
        assert len(kernel.sharding.device_set) == 2
    finally:
        keras.distribution.set_distribution(None)
    _check_same_training(kind, model, initial)
