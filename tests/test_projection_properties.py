"""Property-based tests (hypothesis) of the two stability projections.

For any finite weights in the stated ranges, on every backend:

- the projected weights satisfy the conditions (checked in float64 numpy);
- projecting twice equals projecting once;
- weights already inside the stable set are left unchanged.

Ranges: dense factors `R` of size 1 to 6 with entries in [-100, 100] and
`epsilon` in [0.001, 0.49]; conv kernels `(k, k, c, c)` with `k` in
{1, 3, 5}, `c` from 1 to 4, entries in [-10, 10], `epsilon` in
[0.001, 0.3] and `eta` between `epsilon` and 0.99. `max_examples` is kept
small so that each property takes a few seconds per backend.
"""

import hypothesis
import hypothesis.extra.numpy as hnp
import keras
import numpy as np
from hypothesis import strategies as st

from keras_naisnet import constraints

SETTINGS = hypothesis.settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
# Float32 arithmetic: the projected Gram norm lands on its bound up to a
# few ulps (relative 1e-6); 1e-5 leaves a margin for backend reductions.
RTOL = 1e-5


def _project_dense(factor, epsilon):
    tensor = keras.ops.convert_to_tensor(factor.astype("float32"))
    return keras.ops.convert_to_numpy(
        constraints.project_dense_state(tensor, epsilon)
    )


def _project_conv(kernel, epsilon, eta):
    tensor = keras.ops.convert_to_tensor(kernel.astype("float32"))
    return keras.ops.convert_to_numpy(
        constraints.project_conv_state(tensor, epsilon, eta)
    )


def _gram_norm64(factor):
    factor = np.asarray(factor, np.float64)
    return np.linalg.norm(factor.T @ factor)


def _conv_margins64(kernel):
    """Per output channel: `|1 + centre_c|` and `r_c`, in float64."""
    kernel = np.asarray(kernel, np.float64)
    kh, kw, _, filters = kernel.shape
    centre = np.array([kernel[kh // 2, kw // 2, c, c] for c in range(filters)])
    off = np.abs(kernel).sum(axis=(0, 1, 2)) - np.abs(centre)
    return np.abs(1.0 + centre), off


@st.composite
def dense_factors(draw):
    n = draw(st.integers(1, 6))
    elements = st.floats(
        -100, 100, allow_nan=False, allow_subnormal=False, width=32
    )
    return draw(hnp.arrays(np.float32, (n, n), elements=elements))


@st.composite
def conv_kernels(draw):
    k = draw(st.sampled_from([1, 3, 5]))
    c = draw(st.integers(1, 4))
    elements = st.floats(
        -10, 10, allow_nan=False, allow_subnormal=False, width=32
    )
    return draw(hnp.arrays(np.float32, (k, k, c, c), elements=elements))


@st.composite
def conv_margins(draw):
    epsilon = draw(st.floats(0.001, 0.3))
    eta = draw(st.floats(epsilon + 0.01, 0.99))
    return epsilon, eta


epsilons = st.floats(0.001, 0.49)


@SETTINGS
@hypothesis.given(dense_factors(), epsilons)
def test_dense_projection_satisfies_condition(factor, epsilon):
    delta = 1.0 - 2.0 * epsilon
    projected = _project_dense(factor, epsilon)
    assert np.all(np.isfinite(projected))
    assert _gram_norm64(projected) <= delta * (1 + RTOL)


@SETTINGS
@hypothesis.given(dense_factors(), epsilons)
def test_dense_projection_is_idempotent(factor, epsilon):
    once = _project_dense(factor, epsilon)
    twice = _project_dense(once, epsilon)
    scale = max(float(np.max(np.abs(once))), 1e-30)
    np.testing.assert_allclose(twice, once, rtol=RTOL, atol=RTOL * scale)


@SETTINGS
@hypothesis.given(dense_factors(), epsilons, st.floats(0.0, 1.0 - 1e-4))
def test_dense_projection_keeps_stable_factor(factor, epsilon, fraction):
    # Scale the factor so that ||R^T R||_F = fraction * (1 - 2 epsilon).
    delta = 1.0 - 2.0 * epsilon
    norm = _gram_norm64(factor)
    hypothesis.assume(norm > 0)
    inside = (factor * np.sqrt(fraction * delta / norm)).astype("float32")
    hypothesis.assume(_gram_norm64(inside) <= delta)
    # Exact, except that XLA on CPU flushes float32 subnormals to zero.
    np.testing.assert_allclose(
        _project_dense(inside, epsilon),
        inside,
        rtol=0,
        atol=np.finfo(np.float32).tiny,
    )


@SETTINGS
@hypothesis.given(conv_kernels(), conv_margins())
def test_conv_projection_satisfies_conditions(kernel, margins):
    epsilon, eta = margins
    centre_gap, off_centre = _conv_margins64(_project_conv(kernel, *margins))
    assert np.all(centre_gap <= (1.0 - eta) + RTOL)
    assert np.all(centre_gap + off_centre <= (1.0 - epsilon) + RTOL)


@SETTINGS
@hypothesis.given(conv_kernels(), conv_margins())
def test_conv_projection_is_idempotent(kernel, margins):
    once = _project_conv(kernel, *margins)
    twice = _project_conv(once, *margins)
    np.testing.assert_allclose(twice, once, rtol=RTOL, atol=RTOL)


@SETTINGS
@hypothesis.given(
    conv_kernels(),
    conv_margins(),
    st.floats(0.0, 1.0 - 1e-3),
    st.floats(0.0, 1.0 - 1e-3),
)
def test_conv_projection_keeps_stable_kernel(
    kernel, margins, centre_fraction, off_fraction
):
    # Build a kernel inside the set: per channel, |1 + centre_c| is a
    # fraction of 1 - eta and r_c a fraction of the remaining budget.
    epsilon, eta = margins
    kernel = kernel.astype(np.float64)
    kh, kw, _, filters = kernel.shape
    centre_gap, off_centre = _conv_margins64(kernel)
    sign = np.sign(kernel[kh // 2, kw // 2].diagonal() + 1.0)
    gap = centre_fraction * (1.0 - eta) * np.where(sign == 0, 1.0, sign)
    budget = off_fraction * (1.0 - epsilon - np.abs(gap))
    scale = np.where(off_centre > 0, budget / np.maximum(off_centre, 1e-30), 0)
    inside = kernel * scale
    for c in range(filters):
        inside[kh // 2, kw // 2, c, c] = -1.0 + gap[c]
    inside = inside.astype("float32")
    # Centre taps move by float32 rounding only (-1 - (-1 - centre)).
    np.testing.assert_allclose(
        _project_conv(inside, *margins), inside, rtol=0, atol=1e-6
    )
