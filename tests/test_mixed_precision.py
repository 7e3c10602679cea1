"""Mixed precision: `mixed_float16` and `mixed_bfloat16` training.

The blocks are built with `autocast=False` and cast their float32 variables
to the compute dtype themselves (`BaseNaisBlock._cast`), so that the
projections and the stability check always see float32 weights while the
unrolled steps run in the compute dtype. These tests check that choice on
every backend: variables stay float32, outputs take the compute dtype,
training moves the weights, and the stability conditions hold afterwards.
"""

import keras
import numpy as np
import pytest

from keras_naisnet import NaisDenseBlock
from tests import hardmode_utils as hm

POLICIES = ("mixed_float16", "mixed_bfloat16")
# Relative precision of the compute dtypes (unit roundoff): float16 has
# 11 significant bits, bfloat16 8. A 2-step unroll of order-1 values keeps
# the error within a few roundoffs; the tolerance allows 8.
TOLERANCE = {"mixed_float16": 8 * 2.0**-11, "mixed_bfloat16": 8 * 2.0**-8}


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_precision_training(policy):
    # One model with a conv block, pooling, then a dense block.
    keras.config.set_dtype_policy(policy)
    compute_dtype = keras.DTypePolicy(policy).compute_dtype
    model = hm.make_model("both")
    blocks = [model.get_layer("block"), model.get_layer("dense_block")]
    initial = [block.get_weights() for block in blocks]
    hm.compile_for_training(model)
    x, y = hm.make_inputs("both")
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)

    assert all(np.isfinite(history.history["loss"]))
    for block, before in zip(blocks, initial):
        assert {v.dtype for v in block.weights} == {"float32"}
        assert block.compute_dtype == compute_dtype
        moved = max(
            float(np.max(np.abs(np.asarray(a) - b)))
            for a, b in zip(block.get_weights(), before)
        )
        assert moved > 1e-3, f"training did not move {block.name}"
    conv_out = blocks[0](x)
    dense_out = blocks[1](keras.ops.mean(conv_out, axis=(1, 2)))
    for out in (conv_out, dense_out):
        assert keras.backend.standardize_dtype(out.dtype) == compute_dtype
    assert hm.stability_passed(model)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("kind", hm.BLOCK_KINDS)
def test_mixed_precision_output_matches_float32(kind, policy):
    # The same weights run in float32 and in the compute dtype; the
    # difference is rounding only, so the casts inside `call` are right.
    x, _ = hm.make_inputs(kind, batch=4)
    reference = hm.make_model(kind, stability="reparametrization")
    weights = reference.get_weights()
    expected = keras.ops.convert_to_numpy(reference.get_layer("block")(x))

    keras.config.set_dtype_policy(policy)
    model = hm.make_model(kind, stability="reparametrization")
    model.set_weights(weights)
    actual = model.get_layer("block")(x)
    actual = keras.ops.convert_to_numpy(keras.ops.cast(actual, "float32"))
    tol = TOLERANCE[policy]
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_precision_adaptive_depth(policy):
    # The step-change norm is computed in float32 even when the state is
    # float16, so a tolerance below float16 resolution still stops the loop
    # at `max_steps` rather than failing.
    keras.config.set_dtype_policy(policy)
    block = NaisDenseBlock(4, tol=1e-6, max_steps=30, return_steps=True)
    x, _ = hm.make_inputs("dense", batch=4)
    state, steps = block(x)
    steps = keras.ops.convert_to_numpy(steps)
    state = keras.ops.convert_to_numpy(keras.ops.cast(state, "float32"))
    assert np.all(np.isfinite(state))
    assert np.all((steps >= 1) & (steps <= 30))
