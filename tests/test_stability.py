"""Tests of `keras_naisnet.stability` against float64 NumPy references."""

import math

import keras
import numpy as np
import pytest

from keras_naisnet import NaisConvBlock
from keras_naisnet import NaisDenseBlock
from keras_naisnet import stability
from tests import reference


def _numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor), np.float64)


def _dense_block(rng, units=6, input_dim=4, **kwargs):
    block = NaisDenseBlock(units, **kwargs)
    block(rng.normal(size=(2, input_dim)).astype("float32"))
    return block


def _conv_block(rng, filters=3, channels=2, size=4, **kwargs):
    block = NaisConvBlock(filters, **kwargs)
    block(rng.normal(size=(2, size, size, channels)).astype("float32"))
    return block


# ----------------------------------------------------------------------------
# check


def test_check_flags_dense_block_outside_the_set_and_passes_after_project(
    rng,
):
    block = _dense_block(rng, epsilon=0.05)
    factor = rng.normal(size=(6, 6)).astype("float32")
    block.state_factor.assign(factor)
    report = stability.check(block)
    assert not report.passed
    rows = {c.name: c for c in report.blocks[0].conditions}
    norm = rows["||R^T R||_F <= 1 - 2 eps"]
    f64 = factor.astype(np.float64)
    expected_norm = np.linalg.norm(f64.T @ f64)
    # gram_frobenius_norm runs in float32: relative error about 1e-6.
    np.testing.assert_allclose(norm.value, expected_norm, rtol=1e-5)
    np.testing.assert_allclose(norm.margin, 0.9 - expected_norm, rtol=1e-5)
    assert not norm.passed
    eigenvalues = np.linalg.eigvalsh(
        np.eye(6) + reference.dense_state_matrix(f64, 0.05)
    )
    low = rows["min eig(I + A) >= eps"]
    np.testing.assert_allclose(low.value, eigenvalues[0], rtol=1e-5)
    assert not low.passed
    assert "FAIL" in str(report) and "FAIL" in report.to_markdown()

    block.project()
    report = stability.check(block)
    assert report.passed, str(report)
    assert "FAIL" not in str(report)
    # The projection lands exactly on the bound, up to float32 rounding.
    assert abs(report.blocks[0].conditions[0].margin) < 1e-5


def test_check_conv_block_margins_match_numpy(rng):
    block = _conv_block(rng, filters=3, epsilon=0.02, eta=0.2)
    kernel = rng.normal(scale=0.3, size=(3, 3, 3, 3)).astype("float32")
    block._state_variable.assign(kernel)
    report = stability.check(block)
    assert not report.passed
    k = kernel.astype(np.float64)
    centre = np.array([k[1, 1, c, c] for c in range(3)])
    off = np.abs(k).sum(axis=(0, 1, 2)) - np.abs(centre)
    gershgorin = np.abs(1.0 + centre) + off
    conditions = report.blocks[0].conditions
    np.testing.assert_allclose(conditions[0].value, gershgorin.max(), 1e-6)
    np.testing.assert_allclose(
        conditions[0].margin, 0.98 - gershgorin.max(), rtol=1e-5
    )
    assert conditions[0].detail == f"channel {np.argmax(gershgorin)}"
    np.testing.assert_allclose(
        conditions[1].value, np.abs(1.0 + centre).max(), rtol=1e-6
    )
    block.project()
    assert stability.check(block).passed


def test_check_reparametrization_uses_the_effective_weights(rng):
    dense = _dense_block(rng, stability="reparametrization")
    dense.state_factor.assign(10.0 * rng.normal(size=(6, 6)))
    conv = _conv_block(rng, stability="reparametrization")
    conv._state_variable.assign(rng.normal(size=(3, 3, 3, 3)))
    # Any stored weights give a stable block in this mode.
    assert stability.check(dense).passed
    assert stability.check(conv).passed


def test_check_marks_unconstrained_blocks_and_recurses(rng):
    inner = keras.Sequential(
        [keras.Input((4,)), NaisDenseBlock(4, stability=None, name="inner")]
    )
    inputs = keras.Input((5, 5, 2))
    x = NaisConvBlock(3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(4)(x)
    outputs = inner(x)
    model = keras.Model(inputs, outputs)
    inner.layers[0].state_factor.assign(rng.normal(size=(4, 4)))
    report = stability.check(model)
    assert [b.name for b in report] == ["conv", "inner"]
    assert report.blocks[0].passed and report.blocks[0].constrained
    assert not report.blocks[1].constrained
    assert not report.passed
    assert "none (unconstrained)" in report.to_markdown()
    assert [name for name, _ in report.failures] == ["inner", "inner"]
    assert stability.check(keras.Sequential([keras.layers.Dense(2)])).passed


def test_check_rejects_bad_input():
    with pytest.raises(ValueError, match="atol"):
        stability.check(NaisDenseBlock(2), atol=-1.0)
    with pytest.raises(ValueError, match="not built"):
        stability.check(NaisDenseBlock(2))
    with pytest.raises(ValueError, match="model_or_layer"):
        stability.check("model")


# ----------------------------------------------------------------------------
# Step Jacobian


def _dense_jacobians(block, u, x, activation):
    a = reference.dense_state_matrix(_numpy(block.state_factor), block.epsilon)
    z = x @ a + u @ _numpy(block.input_kernel) + _numpy(block.bias)
    if activation == "tanh":
        slopes = 1.0 - np.tanh(z) ** 2
    else:
        slopes = (z > 0).astype(np.float64)
    h = block.step_size
    # Row-vector layout x A: d x(k+1)_i / d x(k)_j = I + h s_i A_ji.
    return [np.eye(len(s)) + h * np.diag(s) @ a.T for s in slopes]


def _conv_jacobians(block, u, x):
    kernel = _numpy(block.state_kernel)
    z = (
        reference.conv2d_same(x, kernel)
        + reference.conv2d_same(u, _numpy(block.input_kernel))
        + _numpy(block.bias)
    )
    slopes = 1.0 - np.tanh(z) ** 2
    matrix = reference.conv_matrix(kernel, x.shape[1], x.shape[2])
    h = block.step_size
    return [
        np.eye(len(matrix)) + h * np.diag(s.ravel()) @ matrix for s in slopes
    ]


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_dense_spectral_radius_matches_numpy(rng, activation):
    block = _dense_block(rng, units=8, step_size=0.7, activation=activation)
    block.state_factor.assign(rng.normal(size=(8, 8)))
    block.project()
    u = rng.normal(size=(3, 4)).astype("float32")
    x = rng.normal(size=(3, 8)).astype("float32")
    jacobians = _dense_jacobians(block, u, x, activation)
    expected = [np.abs(np.linalg.eigvals(j)).max() for j in jacobians]
    exact = stability.step_jacobian_spectral_radius(block, u, x, method="exact")
    # Float32 Jacobian entries: eigenvalues within about 1e-6.
    np.testing.assert_allclose(exact, expected, atol=1e-5)
    power = stability.step_jacobian_spectral_radius(
        block, u, x, method="power", num_vectors=3
    )
    np.testing.assert_allclose(power, expected, atol=1e-4)
    # The theory: a projected block has spectral radius at most 1.
    assert np.all(exact <= 1.0 + 1e-6)
    norm = stability.step_jacobian_norm(block, u, x)
    expected_norm = [np.linalg.norm(j, 2) for j in jacobians]
    np.testing.assert_allclose(norm, expected_norm, rtol=1e-4)


def test_conv_spectral_radius_matches_numpy_with_complex_eigenvalues(rng):
    block = _conv_block(rng, filters=3, channels=2, size=4, eta=0.5)
    kernel = rng.normal(scale=0.4, size=(3, 3, 3, 3)).astype("float32")
    block._state_variable.assign(kernel)
    block.project()
    u = rng.normal(size=(2, 4, 4, 2)).astype("float32")
    x = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    jacobians = _conv_jacobians(block, u, x)
    eigenvalues = [np.linalg.eigvals(j) for j in jacobians]
    # The test is about non-symmetric Jacobians with complex spectra.
    assert any(np.abs(e.imag).max() > 1e-3 for e in eigenvalues)
    expected = [np.abs(e).max() for e in eigenvalues]
    exact = stability.step_jacobian_spectral_radius(block, u, x, method="exact")
    np.testing.assert_allclose(exact, expected, atol=1e-5)
    power = stability.step_jacobian_spectral_radius(
        block, u, x, method="power", num_vectors=6, num_iterations=3000
    )
    # Clustered eigenvalues near 1 slow the power iteration; 1e-3 is what
    # 3000 float32 iterations reach on this block.
    np.testing.assert_allclose(power, expected, atol=1e-3)
    # Gershgorin: the projected block's Jacobian is inside the unit disc.
    assert np.all(exact < 1.0)
    norm = stability.step_jacobian_norm(block, u, x)
    np.testing.assert_allclose(
        norm, [np.linalg.norm(j, 2) for j in jacobians], rtol=1e-4
    )


def test_spectral_radius_rejects_bad_method(rng):
    block = _dense_block(rng)
    with pytest.raises(ValueError, match="method"):
        stability.step_jacobian_spectral_radius(
            block, np.ones((1, 4)), np.ones((1, 6)), method="svd"
        )


# ----------------------------------------------------------------------------
# Trajectory


def test_trajectory_matches_the_block_and_numpy(rng):
    block = _dense_block(rng, num_steps=7, step_size=0.5)
    u = rng.normal(size=(3, 4)).astype("float32")
    states = stability.trajectory(block, u)
    assert states.shape == (3, 8, 6)
    np.testing.assert_array_equal(states[:, 0], 0.0)
    np.testing.assert_allclose(states[:, -1], _numpy(block(u)), atol=1e-6)
    args = (
        u,
        _numpy(block.state_factor),
        _numpy(block.input_kernel),
        _numpy(block.bias),
    )
    for k in (1, 4, 7):
        expected = reference.dense_recurrence(*args, k, 0.5, block.epsilon)
        np.testing.assert_allclose(states[:, k], expected, atol=1e-5)
    x0 = rng.normal(size=(3, 6)).astype("float32")
    longer = stability.trajectory(block, u, num_steps=20, initial_state=x0)
    assert longer.shape == (3, 21, 6)
    np.testing.assert_allclose(longer[:, 0], x0)


def test_conv_trajectory_from_the_input(rng):
    block = _conv_block(
        rng, filters=2, channels=2, size=5, initial_state="input", num_steps=3
    )
    u = rng.normal(size=(2, 5, 5, 2)).astype("float32")
    states = stability.trajectory(block, u)
    assert states.shape == (2, 4, 5, 5, 2)
    np.testing.assert_allclose(states[:, 0], u)
    np.testing.assert_allclose(states[:, -1], _numpy(block(u)), atol=1e-6)


# ----------------------------------------------------------------------------
# Lipschitz bound


def _ratios(block, pairs, depths, norm):
    """Measured ||x(K; u) - x(K; v)|| / ||u - v|| for each depth K."""
    u, v = pairs
    xu = stability.trajectory(block, u, num_steps=max(depths))
    xv = stability.trajectory(block, v, num_steps=max(depths))
    axes = tuple(range(1, u.ndim))
    if norm == "max":
        den = np.abs(u - v).max(axis=axes)
    else:
        den = np.sqrt(((u - v) ** 2).sum(axis=axes))
    ratios = []
    for k in depths:
        diff = xu[:, k] - xv[:, k]
        if norm == "max":
            num = np.abs(diff).max(axis=axes)
        else:
            num = np.sqrt((diff**2).sum(axis=axes))
        ratios.append(num / den)
    return np.stack(ratios)


@pytest.mark.parametrize("initial_state", ["zeros", "input"])
def test_dense_lipschitz_bound_holds_for_every_depth(rng, initial_state):
    block = _dense_block(
        rng, units=5, input_dim=5, initial_state=initial_state, epsilon=0.1
    )
    block.state_factor.assign(rng.normal(size=(5, 5)))
    block.project()
    bound = stability.lipschitz_bound(block)
    assert math.isfinite(bound)
    u = rng.normal(size=(64, 5)).astype("float32")
    # Large and small perturbations: far pairs and the local slope.
    v = u + rng.normal(size=(64, 5)).astype("float32") * np.repeat(
        [1.0, 1e-2], 32
    )[:, None].astype("float32")
    assert np.all(_ratios(block, (u, v), (1, 5, 40, 200), "l2") <= bound)


def test_lipschitz_bound_for_a_start_state_passed_to_call(rng):
    # A block with initial_state="zeros" called as block(u, initial_state=u)
    # needs the bound for x(0) = u.
    block = _dense_block(rng, units=5, input_dim=5, epsilon=0.1)
    bound = stability.lipschitz_bound(block, input_start=True)
    assert bound > stability.lipschitz_bound(block)
    u = rng.normal(size=(32, 5)).astype("float32")
    v = u + 0.01 * rng.normal(size=(32, 5)).astype("float32")
    xu = stability.trajectory(block, u, num_steps=30, initial_state=u)
    xv = stability.trajectory(block, v, num_steps=30, initial_state=v)
    ratios = (
        np.linalg.norm(xu - xv, axis=-1)
        / np.linalg.norm(u - v, axis=-1)[:, None]
    )
    assert np.all(ratios <= bound)


def test_dense_lipschitz_bound_is_within_a_factor_two_in_the_linear_regime(
    rng,
):
    # R = 0: M = epsilon I and, for tiny inputs, tanh is linear, so the
    # state converges to B^T u / epsilon; along the top singular vector of
    # B the ratio tends to ||B||_2 / epsilon, half the bound.
    block = _dense_block(rng, units=4, input_dim=3, epsilon=0.25)
    block.state_factor.assign(np.zeros((4, 4)))
    block.bias.assign(np.zeros(4))
    kernel = _numpy(block.input_kernel)
    bound = stability.lipschitz_bound(block)
    np.testing.assert_allclose(
        bound, 2 * np.linalg.norm(kernel, 2) / 0.25, rtol=1e-5
    )
    direction = np.linalg.svd(kernel)[0][:, 0]
    u = np.zeros((1, 3), "float32")
    v = (1e-3 * direction[None]).astype("float32")
    ratio = _ratios(block, (u, v), (80,), "l2")[0, 0]
    assert 0.49 * bound <= ratio <= bound


@pytest.mark.parametrize("initial_state", ["zeros", "input"])
def test_conv_lipschitz_bound_holds_for_every_depth(rng, initial_state):
    block = _conv_block(
        rng, filters=2, channels=2, size=5, initial_state=initial_state
    )
    block._state_variable.assign(rng.normal(size=(3, 3, 2, 2)))
    block.project()
    bound = stability.lipschitz_bound(block)
    assert math.isfinite(bound)
    u = rng.normal(size=(16, 5, 5, 2)).astype("float32")
    v = u + 0.1 * rng.normal(size=u.shape).astype("float32")
    assert np.all(_ratios(block, (u, v), (1, 10, 60), "max") <= bound)


def test_lipschitz_bound_is_infinite_without_a_contraction(rng):
    dense = _dense_block(rng, stability=None)
    # lambda_max(M) = 9 > 2 / h: no bound, and the block indeed blows up.
    dense.state_factor.assign(3.0 * np.eye(6))
    assert stability.lipschitz_bound(dense) == math.inf
    conv = _conv_block(rng, stability=None)
    conv._state_variable.assign(np.ones((3, 3, 3, 3)))
    assert stability.lipschitz_bound(conv) == math.inf


# ----------------------------------------------------------------------------
# with_unroll


def _two_block_model():
    inputs = keras.Input((4,))
    x = NaisDenseBlock(5, num_steps=3, name="first")(inputs)
    x = NaisDenseBlock(5, num_steps=4, name="second", initial_state="input")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs)


def test_with_unroll_copies_weights_and_changes_depth(rng):
    model = _two_block_model()
    u = rng.normal(size=(6, 4)).astype("float32")
    same = stability.with_unroll(model)
    np.testing.assert_allclose(
        same.predict(u, verbose=0), model.predict(u, verbose=0), atol=1e-6
    )
    deeper = stability.with_unroll(model, num_steps=9)
    assert [b.num_steps for b in stability.nais_blocks(deeper)] == [9, 9]
    assert [b.num_steps for b in stability.nais_blocks(model)] == [3, 4]
    first, second = stability.nais_blocks(model)
    x = stability.trajectory(first, u, num_steps=9)[:, -1]
    x = stability.trajectory(second, x, num_steps=9)[:, -1]
    head = model.get_layer("head")
    expected = x @ _numpy(head.kernel) + _numpy(head.bias)
    np.testing.assert_allclose(
        deeper.predict(u, verbose=0), expected, atol=1e-5
    )


def test_with_unroll_returns_steps(rng):
    model = _two_block_model()
    u = rng.normal(size=(6, 4)).astype("float32")
    adaptive = stability.with_unroll(
        model, tol=1e-3, max_steps=50, return_steps=True
    )
    assert adaptive.step_block_names == ("first", "second")
    logits, steps = adaptive.predict(u, verbose=0)
    assert logits.shape == (6, 2) and steps.shape == (6, 2)
    assert steps.dtype == np.int32
    assert np.all((steps >= 1) & (steps <= 50))
    fixed = stability.with_unroll(model, num_steps=6, return_steps=True)
    _, steps = fixed.predict(u, verbose=0)
    np.testing.assert_array_equal(steps, 6)
    sequential = keras.Sequential(
        [keras.Input((4,)), NaisDenseBlock(3), keras.layers.Dense(2)]
    )
    _, steps = stability.with_unroll(
        sequential, num_steps=2, return_steps=True
    ).predict(u, verbose=0)
    np.testing.assert_array_equal(steps, 2)


def test_with_unroll_patches_nested_blocks(rng):
    inner = keras.Sequential([keras.Input((4,)), NaisDenseBlock(3)])
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    deeper = stability.with_unroll(model, num_steps=12)
    assert [b.num_steps for b in stability.nais_blocks(deeper)] == [12]
    with pytest.raises(ValueError, match="nested"):
        stability.with_unroll(model, return_steps=True)
    with pytest.raises(ValueError, match="num_steps"):
        stability.with_unroll(model, num_steps=0)
    with pytest.raises(ValueError, match="tol"):
        stability.with_unroll(model, tol=-1.0)
