"""Test set-up shared by every backend.

Two logical CPU devices are configured before any backend starts, so that
the distribution tests (tf.distribute and JAX data parallelism) run on a
machine without accelerators.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_TFDS = REPO.parent / "shared" / "data" / "tfds"
# TFDS reads its default data directory when it is first imported.
if not os.environ.get("TFDS_DATA_DIR"):
    os.environ["TFDS_DATA_DIR"] = str(SHARED_TFDS)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _split_logical_cpus():
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:
        # Already initialized by an earlier import; tests that need two
        # devices check for them.
        pass


_split_logical_cpus()


@pytest.fixture(scope="session")
def tfds_data_dir():
    """The TFDS directory holding CIFAR-10 and Fashion-MNIST.

    `TFDS_DATA_DIR` wins; otherwise the prepared copy beside the checkout.
    A missing directory fails the test: CI must not skip real-data tests.
    """
    path = pathlib.Path(os.environ["TFDS_DATA_DIR"])
    if not (path / "cifar10").is_dir():
        pytest.fail(
            f"No TFDS data at {path}: set TFDS_DATA_DIR to a directory "
            "with cifar10 and fashion_mnist prepared."
        )
    return str(path)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts from float32 and the same seed.

    (`keras.utils.clear_session` is left out: its garbage collection costs
    about a second per test.)
    """
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


def backend():
    return keras.backend.backend()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
