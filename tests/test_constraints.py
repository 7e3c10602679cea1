"""The two reprojections, checked against float64 numpy."""

import keras
import numpy as np
import pytest

from keras_naisnet import constraints
from tests import reference

# Float32 arithmetic on entries of order 1: the norms below are sums of a
# few hundred products, so relative errors stay under 1e-5.
RTOL = 1e-5


@pytest.mark.parametrize("epsilon", [0.01, 0.1, 0.3])
@pytest.mark.parametrize("scale", [10.0, 1e3])
def test_dense_projection_lands_in_stable_set(epsilon, scale, rng):
    factor = (rng.normal(size=(6, 6)) * scale).astype("float32")
    projected = np.asarray(
        constraints.project_dense_state(factor, epsilon), np.float64
    )
    delta = 1.0 - 2.0 * epsilon
    gram = projected.T @ projected
    # Algorithm 1 puts the norm exactly on delta when it was above it.
    np.testing.assert_allclose(np.linalg.norm(gram), delta, rtol=RTOL)
    a = reference.dense_state_matrix(projected, epsilon)
    eigenvalues = np.linalg.eigvalsh(np.eye(6) + a)
    assert eigenvalues.min() >= epsilon - 1e-6
    assert eigenvalues.max() <= 1.0 - epsilon + 1e-6
    # The projection is a positive rescaling of R.
    ratio = projected / factor.astype(np.float64)
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=RTOL)


def test_dense_projection_scale_matches_hand_computation():
    # R = 3 I (4 x 4): R^T R = 9 I, ||.||_F = 18; delta = 0.98;
    # R <- 3 sqrt(0.98 / 18) I.
    factor = 3.0 * np.eye(4, dtype="float32")
    projected = np.asarray(constraints.project_dense_state(factor, 0.01))
    np.testing.assert_allclose(
        projected, 3.0 * np.sqrt(0.98 / 18.0) * np.eye(4), rtol=RTOL
    )


def test_dense_projection_keeps_stable_weights(rng):
    factor = rng.normal(size=(5, 5))
    factor *= np.sqrt(0.5 / np.linalg.norm(factor.T @ factor))
    factor = factor.astype("float32")
    projected = np.asarray(constraints.project_dense_state(factor, 0.01))
    np.testing.assert_array_equal(projected, factor)


def test_gram_norm_does_not_overflow():
    factor = np.full((3, 3), 1e25, dtype="float32")
    # ||R^T R||_F = 3 * 1e50 * 3 = 9e50, beyond float32: compare logs.
    norm = float(constraints.gram_frobenius_norm(factor))
    assert np.isinf(norm) or abs(np.log10(norm) - np.log10(9e50)) < 1e-4
    projected = np.asarray(constraints.project_dense_state(factor, 0.01))
    assert np.all(np.isfinite(projected))
    np.testing.assert_allclose(
        np.linalg.norm(projected.T.astype(np.float64) @ projected),
        0.98,
        rtol=RTOL,
    )


def _random_kernel(rng, channels=4, k=3, scale=2.0):
    return (rng.normal(size=(k, k, channels, channels)) * scale).astype(
        "float32"
    )


@pytest.mark.parametrize("epsilon,eta", [(0.01, 0.1), (0.05, 0.5)])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_conv_projection_satisfies_gershgorin(epsilon, eta, k, rng):
    kernel = _random_kernel(rng, k=k, scale=5.0)
    projected = np.asarray(
        constraints.project_conv_state(kernel, epsilon, eta), np.float64
    )
    c = kernel.shape[-1]
    centre = np.array([projected[k // 2, k // 2, i, i] for i in range(c)])
    off = np.abs(projected).sum(axis=(0, 1, 2)) - np.abs(centre)
    assert np.all(np.abs(1.0 + centre) <= 1.0 - eta + 1e-6)
    assert np.all(np.abs(1.0 + centre) + off <= 1.0 - epsilon + 1e-5)


def test_conv_projection_matches_hand_computation():
    # One channel, 3 x 3: centre 0.5 gives delta = -1.5, clipped to
    # -1 + eta = -0.9, so the centre becomes -0.1; the off-centre taps
    # (eight of 0.5, sum 4) are scaled to 1 - 0.01 - 0.9 = 0.09.
    kernel = np.full((3, 3, 1, 1), 0.5, dtype="float32")
    projected = np.asarray(constraints.project_conv_state(kernel, 0.01, 0.1))
    expected = np.full((3, 3, 1, 1), 0.5 * 0.09 / 4.0)
    expected[1, 1, 0, 0] = -0.1
    np.testing.assert_allclose(projected, expected, rtol=RTOL, atol=1e-7)


def test_conv_projection_keeps_stable_kernel():
    # Centre -1 (delta 0) and off-centre sum 0.5 < 0.99: unchanged.
    kernel = np.zeros((3, 3, 2, 2), dtype="float32")
    kernel[1, 1, 0, 0] = kernel[1, 1, 1, 1] = -1.0
    kernel[0, 0, 1, 0] = 0.25
    kernel[2, 1, 0, 1] = -0.5
    kernel[0, 2, 0, 0] = 0.25
    projected = np.asarray(constraints.project_conv_state(kernel, 0.01, 0.1))
    np.testing.assert_array_equal(projected, kernel)


@pytest.mark.parametrize("step_size", [0.3, 1.0])
def test_conv_projection_step_jacobian_inside_unit_disc(step_size, rng):
    # A 4-channel state on a 6 x 6 image: J = I + h S Cmat must have all
    # eigenvalues strictly inside the unit disc for slopes S in (0, 1].
    kernel = _random_kernel(rng, channels=4, scale=3.0)
    projected = np.asarray(
        constraints.project_conv_state(kernel, 0.01, 0.1), np.float64
    )
    cmat = reference.conv_matrix(projected, 6, 6)
    raw = reference.conv_matrix(kernel.astype(np.float64), 6, 6)
    for _ in range(5):
        slopes = rng.uniform(1e-3, 1.0, size=cmat.shape[0])
        jac = np.eye(cmat.shape[0]) + step_size * slopes[:, None] * cmat
        assert np.abs(np.linalg.eigvals(jac)).max() < 1.0
    # The raw kernel is far outside: the test would catch a no-op.
    jac_raw = np.eye(raw.shape[0]) + step_size * raw
    assert np.abs(np.linalg.eigvals(jac_raw)).max() > 1.0


def test_conv_state_margins_values():
    kernel = np.zeros((3, 3, 2, 2), dtype="float32")
    kernel[1, 1, 0, 0] = -0.7
    kernel[1, 1, 1, 0] = 0.2  # off-centre for output channel 0
    kernel[0, 0, 0, 1] = -0.3
    margins = constraints.conv_state_margins(kernel)
    np.testing.assert_allclose(margins["centre"], [-0.7, 0.0], atol=1e-7)
    np.testing.assert_allclose(margins["off_centre_sum"], [0.2, 0.3], atol=1e-7)
    np.testing.assert_allclose(
        margins["gershgorin"], [0.3 + 0.2, 1.0 + 0.3], atol=1e-6
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: constraints.DenseStateProjection(0.5), "epsilon"),
        (lambda: constraints.DenseStateProjection(-0.1), "epsilon"),
        (lambda: constraints.ConvStateProjection(0.1, eta=0.05), "eta"),
        (lambda: constraints.ConvStateProjection(0.1, eta=1.0), "eta"),
    ],
)
def test_constraint_arguments_are_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_conv_projection_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd spatial size"):
        constraints.project_conv_state(np.zeros((2, 2, 3, 3), "float32"))


@pytest.mark.parametrize(
    "constraint",
    [
        constraints.DenseStateProjection(0.05),
        constraints.ConvStateProjection(0.02, 0.2),
    ],
)
def test_constraints_serialize(constraint):
    config = keras.saving.serialize_keras_object(constraint)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(constraint)
    assert restored.get_config() == constraint.get_config()
