"""Bad input: each case, its documented outcome, on every backend.

Every row of `CASES` is one kind of bad input and the outcome the README
("Backends and deployment") documents for it. Each case runs on the dense
and on the convolutional block (2 steps of size 1, tanh, `epsilon=0.01`).
"""

import keras
import numpy as np
import pytest

from keras_naisnet import NaisConvBlock
from keras_naisnet import NaisDenseBlock
from tests import hardmode_utils as hm

NUM_STEPS = 2
MAX_STEPS = 40
TOL = 1e-3
# Finite samples next to a bad one must give what they give alone; float32
# kernels may batch differently, so allow a few ulps of order-1 values.
ATOL = 1e-6


def _block(kind, **kwargs):
    kwargs.setdefault("num_steps", NUM_STEPS)
    if kind == "conv":
        return NaisConvBlock(4, **kwargs)
    return NaisDenseBlock(4, **kwargs)


def _adaptive(kind):
    return _block(kind, tol=TOL, max_steps=MAX_STEPS, return_steps=True)


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _with_bad_sample(kind, value):
    x, _ = hm.make_inputs(kind, batch=3)
    bad = x.copy()
    bad[1].flat[0] = value
    return x, bad


def _per_sample(array):
    return array.reshape(array.shape[0], -1)


def _nan_fixed(kind):
    block = _block(kind)
    x, bad = _with_bad_sample(kind, np.nan)
    clean = _numpy(block(x))
    out = _per_sample(_numpy(block(bad)))
    assert np.isnan(out[1]).any()
    np.testing.assert_allclose(
        out[[0, 2]], _per_sample(clean)[[0, 2]], atol=ATOL
    )


def _nan_adaptive(kind):
    block = _adaptive(kind)
    x, bad = _with_bad_sample(kind, np.nan)
    clean, clean_steps = map(_numpy, block(x))
    out, steps = map(_numpy, block(bad))
    out = _per_sample(out)
    assert np.isnan(out[1]).any()
    assert steps[1] == MAX_STEPS
    np.testing.assert_array_equal(steps[[0, 2]], clean_steps[[0, 2]])
    np.testing.assert_allclose(
        out[[0, 2]], _per_sample(clean)[[0, 2]], atol=ATOL
    )


def _nan_adaptive_compiled(kind):
    # The same through `predict`: the compiled loop ends at `max_steps`.
    block = _block(kind, tol=TOL, max_steps=MAX_STEPS)
    model = keras.Sequential([keras.Input(_input_shape(kind)), block])
    _, bad = _with_bad_sample(kind, np.nan)
    out = _per_sample(model.predict(bad, verbose=0))
    assert np.isnan(out[1]).any()
    assert np.isfinite(out[[0, 2]]).all()


def _inf_fixed(kind):
    block = _block(kind)
    x, bad = _with_bad_sample(kind, np.inf)
    clean = _numpy(block(x))
    out = _per_sample(_numpy(block(bad)))
    # tanh saturates at +-1, so each step moves a unit by at most h = 1.
    assert np.isfinite(out).all()
    assert np.abs(out[1]).max() <= NUM_STEPS * 1.0
    np.testing.assert_allclose(
        out[[0, 2]], _per_sample(clean)[[0, 2]], atol=ATOL
    )


def _inf_adaptive(kind):
    block = _adaptive(kind)
    _, bad = _with_bad_sample(kind, np.inf)
    out, steps = map(_numpy, block(bad))
    # The saturated units change by h = 1 every step: never settled.
    assert np.isfinite(out).all()
    assert steps[1] == MAX_STEPS
    assert np.all(steps[[0, 2]] < MAX_STEPS)


def _input_shape(kind):
    return hm.IMAGE_SHAPE if kind == "conv" else (hm.DENSE_INPUT_DIM,)


def _state_shape(kind):
    return (8, 8, 4) if kind == "conv" else (4,)


def _empty_fixed(kind):
    block = _block(kind)
    x, _ = hm.make_inputs(kind, batch=2)
    block(x)
    out = block(x[:0])
    assert tuple(out.shape) == (0,) + _state_shape(kind)


def _empty_adaptive(kind):
    out, steps = _adaptive(kind)(hm.make_inputs(kind, batch=2)[0][:0])
    assert tuple(out.shape) == (0,) + _state_shape(kind)
    assert tuple(steps.shape) == (0,)


def _wrong_rank(kind):
    x, _ = hm.make_inputs(kind, batch=2)
    with pytest.raises(ValueError, match="expected ndim"):
        _block(kind)(x[..., None])


def _wrong_rank_after_build(kind):
    block = _block(kind)
    x, _ = hm.make_inputs(kind, batch=2)
    block(x)
    with pytest.raises(ValueError, match="expected ndim"):
        block(x[..., None])


def _wrong_channels_after_build(kind):
    block = _block(kind)
    x, _ = hm.make_inputs(kind, batch=2)
    block(x)
    with pytest.raises(ValueError, match="expected axis -1"):
        block(np.concatenate([x, x], axis=-1))


def _integer_input(kind):
    block = _block(kind)
    x, _ = hm.make_inputs(kind, batch=2)
    x = np.round(x * 3).astype("int32")
    out = block(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_array_equal(
        _numpy(out), _numpy(block(x.astype("float32")))
    )


def _float64_input(kind):
    block = _block(kind)
    x, _ = hm.make_inputs(kind, batch=2)
    out = block(x.astype("float64"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_array_equal(_numpy(out), _numpy(block(x)))


def _num_steps_above_cap(kind):
    with pytest.raises(ValueError, match="Received: num_steps=1001"):
        _block(kind, num_steps=1001)
    with pytest.raises(ValueError, match="Received: num_steps=1000000000"):
        _block(kind, num_steps=10**9)


def _max_steps_above_cap(kind):
    with pytest.raises(ValueError, match="Received: max_steps=2147483648"):
        _block(kind, tol=TOL, max_steps=2**31)


def _huge_max_steps(kind):
    # Allowed: the loop ends when every sample settles.
    block = _block(kind, tol=TOL, max_steps=10**6, return_steps=True)
    x, _ = hm.make_inputs(kind, batch=3)
    out, steps = map(_numpy, block(x))
    assert np.isfinite(out).all()
    assert np.all(steps < 1000)


# (id, documented outcome, check). The README table lists the same rows.
CASES = [
    (
        "nan-fixed",
        "NaN in that sample's output; other samples unchanged",
        _nan_fixed,
    ),
    (
        "nan-adaptive",
        "NaN output; the sample runs to max_steps; others unchanged",
        _nan_adaptive,
    ),
    (
        "nan-adaptive-predict",
        "compiled loop ends at max_steps; other samples finite",
        _nan_adaptive_compiled,
    ),
    (
        "inf-fixed",
        "finite output (tanh saturates), |x| <= num_steps * step_size",
        _inf_fixed,
    ),
    (
        "inf-adaptive",
        "finite output; the sample runs to max_steps",
        _inf_adaptive,
    ),
    ("empty-fixed", "output with batch size 0", _empty_fixed),
    ("empty-adaptive", "output and steps with batch size 0", _empty_adaptive),
    ("wrong-rank", "ValueError at build (expected ndim)", _wrong_rank),
    (
        "wrong-rank-built",
        "ValueError at call (expected ndim)",
        _wrong_rank_after_build,
    ),
    (
        "wrong-channels-built",
        "ValueError at call (expected axis -1)",
        _wrong_channels_after_build,
    ),
    ("int32", "cast to float32; same output as float32", _integer_input),
    ("float64", "cast to float32; same output as float32", _float64_input),
    (
        "num-steps-above-1000",
        "ValueError at construction",
        _num_steps_above_cap,
    ),
    (
        "max-steps-above-int32",
        "ValueError at construction",
        _max_steps_above_cap,
    ),
    (
        "max-steps-1e6",
        "allowed; the loop stops when every sample settles",
        _huge_max_steps,
    ),
]


@pytest.mark.parametrize("kind", hm.BLOCK_KINDS)
@pytest.mark.parametrize(
    "outcome, check",
    [pytest.param(outcome, check, id=name) for name, outcome, check in CASES],
)
def test_bad_input(kind, outcome, check):
    check(kind)
