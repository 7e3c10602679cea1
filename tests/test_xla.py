"""XLA: training and adaptive-depth inference with `jit_compile=True`.

On a CPU-only TensorFlow, `jit_compile="auto"` turns XLA off, so XLA is
asked for explicitly. On JAX every compiled step goes through XLA.
PyTorch has no XLA path in Keras (`jit_compile=True` means `torch.compile`
there), so these tests skip on it.
"""

import keras
import numpy as np
import pytest

from tests import hardmode_utils as hm

pytestmark = pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "jax"),
    reason="XLA compilation is a TensorFlow and JAX feature; the torch "
    "backend compiles with torch.compile instead.",
)

# Two SGD steps from identical weights; XLA fuses and reorders float32
# operations, which changes the last bits of each step (about 1e-7
# relative), and the learning rate of 0.5 amplifies it a few times.
WEIGHT_ATOL = 1e-5


def _train(kind, jit_compile, initial_weights=None):
    model = hm.make_model(kind)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    hm.compile_for_training(model, jit_compile=jit_compile)
    x, y = hm.make_inputs(kind)
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model, history.history["loss"][-1]


def test_jit_compiled_training_matches_eager():
    kind = "both"
    reference = hm.make_model(kind)
    initial = reference.get_weights()
    compiled, loss = _train(kind, True, initial)
    plain, _ = _train(kind, False, initial)

    assert np.isfinite(loss)
    moved = hm.max_weight_difference(
        hm.weights_as_numpy(compiled), [np.float64(w) for w in initial]
    )
    assert moved > 1e-3, "training did not move the weights"
    assert (
        hm.max_weight_difference(
            hm.weights_as_numpy(compiled), hm.weights_as_numpy(plain)
        )
        < WEIGHT_ATOL
    )
    assert hm.stability_passed(compiled)


def test_jit_compiled_adaptive_depth_predict():
    kind = "both"
    # The data-dependent while loop of adaptive depth, compiled by XLA.
    model = hm.make_model(kind, tol=1e-3, max_steps=20)
    x, _ = hm.make_inputs(kind, batch=6)
    # Different input scales make the samples settle after different
    # numbers of steps.
    x = x * np.array([0.0, 0.1, 0.5, 1.0, 3.0, 10.0], "float32").reshape(
        (-1,) + (1,) * (x.ndim - 1)
    )
    model.compile(jit_compile=False)
    expected = model.predict(x, verbose=0)
    model.compile(jit_compile=True)
    compiled = model.predict(x, verbose=0)
    np.testing.assert_allclose(compiled, expected, rtol=1e-5, atol=1e-5)
