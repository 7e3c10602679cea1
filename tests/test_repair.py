"""Weights that break the stability conditions: report, repair, survive.

Keras applies constraints only inside `optimizer.apply`, so weights can
leave the stable set through `load_weights`, `set_weights`, or a custom
loop that writes the variables itself. For each route,
`keras_naisnet.stability.check` reports the broken block, `project()`
repairs it, and a block with `stability="reparametrization"` gives the
output of the repaired weights whatever is stored.
"""

import keras
import numpy as np
import pytest

from keras_naisnet import NaisConvBlock
from keras_naisnet import constraints
from keras_naisnet import stability
from tests import hardmode_utils as hm


def _break(model):
    """Unstable state weights for every NAIS block of `model`."""
    for block in stability.nais_blocks(model):
        weights = block.get_weights()
        if isinstance(block, NaisConvBlock):
            # Centre taps of +0.5: |1 + centre| = 1.5 > 1 - epsilon.
            mask = keras.ops.convert_to_numpy(
                constraints.centre_tap_mask((3, 3), block.filters)
            )
            weights[0] = weights[0] * (1 - mask) + 0.5 * mask
        else:
            # ||R^T R||_F = 9 sqrt(units) > 1 - 2 epsilon.
            weights[0] = 3.0 * np.eye(block.units, dtype="float32")
        yield block, weights


def _set_broken_weights(model):
    for block, weights in list(_break(model)):
        block.set_weights(weights)


def _assert_reported_then_repaired(model):
    report = stability.check(model)
    assert not report.passed
    failed = {name for name, _ in report.failures}
    assert failed == {b.name for b in stability.nais_blocks(model)}
    assert "FAIL" in str(report)
    for block in stability.nais_blocks(model):
        block.project()
    assert stability.check(model).passed


@pytest.mark.parametrize("kind", hm.BLOCK_KINDS)
def test_set_weights(kind):
    model = hm.make_model(kind)
    _set_broken_weights(model)
    _assert_reported_then_repaired(model)


@pytest.mark.parametrize("kind", hm.BLOCK_KINDS)
def test_load_weights_from_file(kind, tmp_path):
    # An unconstrained model with unstable weights writes the file.
    source = hm.make_model(kind, stability=None)
    _set_broken_weights(source)
    path = str(tmp_path / "unstable.weights.h5")
    source.save_weights(path)

    model = hm.make_model(kind)
    assert stability.check(model).passed
    model.load_weights(path)
    _assert_reported_then_repaired(model)


@pytest.mark.parametrize("kind", hm.BLOCK_KINDS)
def test_custom_loop_writing_variables(kind):
    # A custom loop that updates the state weights itself, without
    # `optimizer.apply`, never runs the projection constraint.
    model = hm.make_model(kind)
    for block, weights in list(_break(model)):
        block._state_variable.assign(weights[0])
    _assert_reported_then_repaired(model)


@pytest.mark.parametrize("kind", hm.BLOCK_KINDS)
def test_reparametrization_uses_projected_weights(kind):
    # With stored unstable weights, a reparametrized block computes what
    # a projection-mode block computes after `project()`.
    x, _ = hm.make_inputs(kind, batch=4)
    model = hm.make_model(kind, stability="reparametrization")
    _set_broken_weights(model)
    assert stability.check(model).passed
    repaired = hm.make_model(kind)
    repaired.set_weights(model.get_weights())
    for block in stability.nais_blocks(repaired):
        block.project()
    # Same float32 operations on the same projected weights.
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        repaired.predict(x, verbose=0),
        rtol=1e-6,
        atol=1e-6,
    )


def _final_state(stability_mode, weights, x, num_steps):
    block = NaisConvBlock(
        4, num_steps=num_steps, activation="relu", stability=stability_mode
    )
    block.build(x.shape)
    block.set_weights(weights)
    return keras.ops.convert_to_numpy(block(x))


def test_reparametrization_stays_bounded_far_past_training_depth():
    # Trained at 2 steps, unrolled to 100 and 400. With relu and centre taps
    # of +0.5 the unconstrained recurrence amplifies positive states by
    # about 1.5 per step, so it overflows float32 (1.5**400 > 3e38); the
    # reparametrized block converges to its equilibrium.
    x, _ = hm.make_inputs("conv", batch=2)
    block = NaisConvBlock(4, num_steps=2, activation="relu")
    block.build(x.shape)
    ((_, weights),) = _break_block(block)

    bounded_100 = _final_state("reparametrization", weights, x, 100)
    bounded_400 = _final_state("reparametrization", weights, x, 400)
    assert np.isfinite(bounded_400).all()
    # Settled: 300 more steps move the state by less than 0.1% (the
    # slowest channels contract by about 1 - epsilon per step).
    np.testing.assert_allclose(bounded_400, bounded_100, rtol=1e-3, atol=1e-3)

    unbounded = _final_state(None, weights, x, 400)
    assert not np.isfinite(unbounded).all() or np.abs(unbounded).max() > 1e30


def _break_block(block):
    holder = keras.Sequential([keras.Input(hm.IMAGE_SHAPE), block])
    return list(_break(holder))
