"""The stability-study builder (`keras_naisnet.ablation`) and its example."""

import csv
import importlib.util
import itertools
import math

import keras
import numpy as np
import pytest

from keras_naisnet import NaisDenseBlock
from keras_naisnet import ablation
from keras_naisnet.constraints import DenseStateProjection
from tests.conftest import REPO

ALL_SWITCHES = [
    ablation.Switches(*flags)
    for flags in itertools.product((False, True), repeat=4)
]
UNITS = 4
NUM_STEPS = 3
EPSILON = 0.01


def _ids(switches):
    return ablation.variant_name(switches)


def _numpy(x):
    if isinstance(x, keras.Variable):
        return np.array(x.numpy())
    return keras.ops.convert_to_numpy(x)


def _built_stage(switches, num_steps=NUM_STEPS):
    stage = ablation.build_stage(UNITS, switches, num_steps=num_steps)
    stage.build((None, UNITS))
    return stage


def _state_factors(stage):
    if isinstance(stage, NaisDenseBlock):
        return [stage.state_factor]
    return list(stage.state_factors)


def test_study_variants():
    assert list(ablation.STUDY_VARIANTS) == [
        "ResNet",
        "ResNet-BN",
        "ResNet-SH",
        "ResNet-SH-BN",
        "ResNet-NA",
        "ResNet-NA-BN",
        "ResNet-SH-NA",
        "ResNet-SH-NA-BN",
        "ResNet-SH-Stable",
        "NAIS-Net",
    ]
    for name, switches in ablation.STUDY_VARIANTS.items():
        assert ablation.variant_name(switches) == name


@pytest.mark.parametrize("switches", ALL_SWITCHES, ids=_ids)
def test_structure_and_shared_weights(switches):
    stage = _built_stage(switches)
    shared, skip, norm, stable = switches
    if shared and skip and not norm:
        # NAIS-Net and its unprojected twin are the library's block.
        assert isinstance(stage, NaisDenseBlock)
        assert stage.stability == ("projection" if stable else None)
        assert stage.initial_state == "input"
        assert stage.num_steps == NUM_STEPS
    else:
        assert isinstance(stage, ablation.AblationStage)
    sets = 1 if shared else NUM_STEPS
    # Per weight set: R and b, B with the input skip, gamma and beta with
    # batch norm.
    per_set = 2 + int(skip) + 2 * int(norm)
    variables = stage.trainable_weights
    assert len(variables) == sets * per_set
    assert len({id(v) for v in variables}) == sets * per_set
    assert len(_state_factors(stage)) == sets
    per_set_params = (1 + int(skip)) * UNITS**2 + UNITS + 2 * UNITS * norm
    trainable = sum(int(np.prod(v.shape)) for v in variables)
    assert trainable == sets * per_set_params
    # Batch norm adds its moving mean and variance, not trainable.
    assert stage.count_params() == sets * (per_set_params + 2 * UNITS * norm)


@pytest.mark.parametrize("switches", ALL_SWITCHES, ids=_ids)
def test_input_skip_reaches_the_last_layer(switches, rng):
    stage = _built_stage(switches)
    u = rng.normal(size=(2, UNITS)).astype("float32")
    moved = u + rng.normal(size=u.shape).astype("float32")
    fixed_start = np.zeros_like(u)
    _, z = ablation.stage_trajectory(stage, u, initial_state=fixed_start)
    _, z_moved = ablation.stage_trajectory(
        stage, moved, initial_state=fixed_start
    )
    change = np.max(np.abs(_numpy(z[-1]) - _numpy(z_moved[-1])))
    if switches.input_skip:
        # u B has entries of order 1, far above float32 rounding.
        assert change > 1e-3
    else:
        # Autonomous: from a fixed x(0) nothing depends on u.
        assert change == 0.0
    # With the default start x(0) = u every variant depends on u.
    states, _ = ablation.stage_trajectory(stage, u)
    states_moved, _ = ablation.stage_trajectory(stage, moved)
    assert np.max(np.abs(_numpy(states[-1]) - _numpy(states_moved[-1]))) > 0


@pytest.mark.parametrize("switches", ALL_SWITCHES, ids=_ids)
def test_trajectory_matches_call(switches, rng):
    stage = _built_stage(switches)
    u = rng.normal(size=(3, UNITS)).astype("float32")
    states, _ = ablation.stage_trajectory(stage, u)
    assert len(states) == NUM_STEPS + 1
    np.testing.assert_allclose(_numpy(states[0]), u)
    np.testing.assert_allclose(
        _numpy(states[-1]), _numpy(stage(u)), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("skip", [False, True])
def test_unshared_stage_matches_numpy_and_repeats_last_layer(skip, rng):
    stage = ablation.AblationStage(
        UNITS, num_steps=2, shared_weights=False, input_skip=skip
    )
    stage.build((None, UNITS))
    stage.set_weights(
        [rng.normal(size=w.shape).astype("float32") for w in stage.weights]
    )
    u = rng.normal(size=(2, UNITS))
    factors = [_numpy(r).astype("float64") for r in stage.state_factors]
    kernels = [_numpy(b).astype("float64") for b in stage.input_kernels]
    biases = [_numpy(b).astype("float64") for b in stage.biases]
    state = u.copy()
    expected = [state]
    # Two trained layers, then the last one again: the documented
    # continuation of an unshared stage past its depth.
    for k in (0, 1, 1, 1):
        matrix = -(factors[k].T @ factors[k] + EPSILON * np.eye(UNITS))
        z = state @ matrix + biases[k]
        if skip:
            z = z + u @ kernels[k]
        state = state + np.tanh(z)
        expected.append(state)
    states, _ = ablation.stage_trajectory(stage, u.astype("float32"), 4)
    # Float32 against float64 over 4 steps of order-1 values.
    np.testing.assert_allclose(
        np.stack([_numpy(s) for s in states]),
        np.stack(expected),
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize(
    "switches",
    [s for s in ALL_SWITCHES if not s.batch_norm],
    ids=_ids,
)
def test_projection_attached_and_holds_after_training(switches, rng):
    delta = 1.0 - 2.0 * EPSILON
    model = ablation.build_ablation_model(
        switches, input_shape=(6,), units=UNITS, num_steps=NUM_STEPS
    )
    stage = model.get_layer("stage")
    factors = _state_factors(stage)
    for factor in factors:
        if switches.stable:
            assert isinstance(factor.constraint, DenseStateProjection)
            assert factor.constraint.epsilon == EPSILON
        else:
            assert factor.constraint is None
    # Start every R outside the stable set (||R^T R||_F = 4 delta): after
    # one optimizer step only the projection can bring it back, since a
    # small step cannot shrink the norm by a factor of 4.
    for factor in factors:
        factor.assign(2.0 * factor)
    model.compile(keras.optimizers.SGD(learning_rate=0.1), "mse")
    model.fit(
        rng.normal(size=(16, 6)).astype("float32"),
        rng.normal(size=(16, 10)).astype("float32"),
        batch_size=16,
        epochs=1,
        verbose=0,
    )
    for factor in factors:
        r = _numpy(factor).astype("float64")
        norm = np.linalg.norm(r.T @ r)
        if switches.stable:
            # The projection lands on delta in float32: relative 1e-5.
            assert norm <= delta * (1 + 1e-5)
            eigenvalues = np.linalg.eigvalsh(np.eye(UNITS) - r.T @ r)
            assert np.all(eigenvalues >= EPSILON - 1e-5)
            radius = ablation.step_matrix_radius(stage)
            assert radius <= 1.0 - EPSILON + 1e-5
        else:
            assert norm > 2.0 * delta


def test_every_variant_starts_from_the_same_state_factor():
    delta = 1.0 - 2.0 * EPSILON
    for switches in ALL_SWITCHES:
        keras.utils.set_random_seed(3)
        factor = _numpy(_state_factors(_built_stage(switches))[0])
        gram = factor.T.astype("float64") @ factor
        # R^T R = (delta / sqrt(units)) I, up to float32 rounding.
        np.testing.assert_allclose(
            gram, delta / np.sqrt(UNITS) * np.eye(UNITS), atol=1e-6
        )


def test_evaluate_by_depth_past_training_depth(rng):
    model = ablation.build_ablation_model(
        "ResNet-NA", input_shape=(6,), units=UNITS, num_steps=NUM_STEPS
    )
    images = rng.normal(size=(7, 6)).astype("float32")
    labels = rng.integers(0, 10, size=7)
    result = ablation.evaluate_by_depth(
        model, images, labels, 3 * NUM_STEPS, batch_size=3
    )
    assert result["loss"].shape == (3 * NUM_STEPS,)
    # At the training depth the unrolled loss is the model's own.
    logits = _numpy(model(images))
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -log_probs[np.arange(7), labels].mean()
    np.testing.assert_allclose(result["loss"][NUM_STEPS - 1], expected, 1e-5)
    accuracy = np.mean(logits.argmax(axis=1) == labels)
    assert result["accuracy"][NUM_STEPS - 1] == pytest.approx(accuracy)


def test_step_matrix_radius_by_hand():
    stage = _built_stage(ablation.Switches(False, True, False, False))
    # R_0 = 2 I gives I + A = I - (4 + eps) I = -4.01 I; the other
    # layers keep their stable start.
    stage.state_factors[0].assign(2.0 * np.eye(UNITS, dtype="float32"))
    assert ablation.step_matrix_radius(stage) == pytest.approx(
        3.0 + EPSILON, rel=1e-6
    )


def test_config_round_trip():
    stage = ablation.AblationStage(
        8, num_steps=5, shared_weights=False, batch_norm=True, stable=True
    )
    clone = ablation.AblationStage.from_config(stage.get_config())
    assert clone.get_config() == stage.get_config()


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: switches="):
        ablation.build_stage(4, "ResNet-XY")
    with pytest.raises(ValueError, match="Received: units=0"):
        ablation.AblationStage(0)
    with pytest.raises(ValueError, match="Received: stage="):
        ablation.stage_trajectory(keras.layers.Dense(4), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="Received: max_steps=0"):
        ablation.evaluate_by_depth(
            ablation.build_ablation_model("ResNet-SH", units=4, num_steps=2),
            np.zeros((2, 28, 28, 1)),
            np.zeros(2, "int32"),
            0,
        )
    with pytest.raises(ValueError, match="Received: input_shape="):
        ablation.AblationStage(4)(np.zeros((2, 5), "float32"))


def _load_example():
    path = REPO / "examples" / "ablation.py"
    spec = importlib.util.spec_from_file_location("ablation_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_example_short_run(tfds_data_dir, tmp_path):
    example = _load_example()
    # One of each kind of stage: unshared with batch norm, shared
    # autonomous, the library block; the last two have trajectory plots.
    variants = ["ResNet-NA-BN", "ResNet-SH-Stable", "NAIS-Net"]
    example.main(
        [
            "--epochs=1",
            "--train-size=256",
            "--test-size=100",
            "--num-steps=3",
            "--units=8",
            "--images-per-class=2",
            f"--variants={','.join(variants)}",
            f"--data-dir={tfds_data_dir}",
            f"--output={tmp_path}",
        ]
    )
    for name in ("loss_by_depth.png", "trajectories.png"):
        assert (tmp_path / name).stat().st_size > 1000
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {name} |" in table for name in variants)

    def rows(name):
        with open(tmp_path / name, newline="") as handle:
            return list(csv.DictReader(handle))

    results = rows("results.csv")
    assert [row["variant"] for row in results] == variants
    depth = rows("loss_by_depth.csv")
    assert len(depth) == len(variants) * 9
    trajectories = rows("trajectories.csv")
    # 2 trajectory variants x 10 classes x 2 images x 10 states.
    assert len(trajectories) == 2 * 10 * 2 * 10
    settling = rows("settling.csv")
    assert len(settling) == 2 * 10
    for table_rows, numeric in (
        (
            results,
            ["fit_accuracy", "train_loss", "test_loss", "step_radius"],
        ),
        (depth, ["test_loss", "test_accuracy"]),
        (trajectories, ["state"]),
        (settling, ["mean_state_at_max_steps", "mean_settling_step"]),
    ):
        for row in table_rows:
            assert all(math.isfinite(float(row[key])) for key in numeric)
    for name in variants:
        assert (tmp_path / "history" / f"{name}.csv").is_file()


@pytest.mark.parametrize("name", ["ResNet-NA-BN", "NAIS-Net"])
def test_keras_save_and_reload(name, tmp_path, rng):
    model = ablation.build_ablation_model(
        name, input_shape=(6,), units=UNITS, num_steps=2
    )
    images = rng.normal(size=(5, 6)).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        _numpy(reloaded(images)), _numpy(model(images)), rtol=1e-6, atol=1e-6
    )
