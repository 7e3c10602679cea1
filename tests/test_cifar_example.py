"""examples/cifar.py and examples/compare.py end to end, on real CIFAR-10."""

import csv
import json
import math
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_naisnet import data
from tests.conftest import REPO
from tests.conftest import backend

sys.path.insert(0, str(REPO / "examples"))

import cifar  # noqa: E402
import compare  # noqa: E402

SAVED_MODEL_CLI = pathlib.Path(sys.executable).parent / "saved_model_cli"


def test_pipeline_batches_scales_and_slices(tfds_data_dir):
    ds = data.load_image_classification(
        "cifar10",
        "train",
        batch_size=16,
        data_dir=tfds_data_dir,
        take=40,
        augment=True,
        seed=1,
    )
    batches = list(ds)
    assert [len(labels) for _, labels in batches] == [16, 16, 8]
    images = np.concatenate([np.asarray(x) for x, _ in batches])
    assert images.dtype == np.float32 and images.shape[1:] == (32, 32, 3)
    assert 0.0 <= images.min() and images.max() <= 1.0
    labels = np.concatenate([np.asarray(y) for _, y in batches])
    assert labels.dtype == np.int32 and set(labels) <= set(range(10))
    # Without augmentation and shuffling the pipeline returns the split.
    plain = data.load_image_classification(
        "cifar10", "train[:40]", batch_size=40, data_dir=tfds_data_dir
    )
    x, y = next(iter(plain))
    again = data.load_image_classification(
        "cifar10", "train", batch_size=40, data_dir=tfds_data_dir, take=40
    )
    x2, y2 = next(iter(again))
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x2))
    np.testing.assert_array_equal(np.sort(np.asarray(y)), np.sort(labels))
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        data.load_image_classification("cifar10", "train", batch_size=0)


def _epochs(ds, count):
    return [
        np.concatenate([np.asarray(x) for x, _ in ds]) for _ in range(count)
    ]


def test_seeded_pipeline_repeats_runs_not_epochs(tfds_data_dir):
    # The augmentation runs in a parallel map; with stateless random ops
    # and per-example seeds two pipelines built with one seed still yield
    # bitwise the same epochs, while each epoch draws new crops and flips.
    def build(seed):
        return data.load_image_classification(
            "cifar10",
            "train[:64]",
            batch_size=16,
            data_dir=tfds_data_dir,
            augment=True,
            shuffle=False,
            seed=seed,
        )

    first, second = _epochs(build(3), 2), _epochs(build(3), 2)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], _epochs(build(4), 1)[0])


def test_augment_image_crops_and_flips_by_hand():
    # A 4 x 4 ramp, so that every crop offset and the flip are visible.
    image = np.arange(16, dtype="float32").reshape(4, 4, 1)
    padded = np.pad(image, [(1, 1), (1, 1), (0, 0)])
    # Every window of the padded image, and its mirror image.
    windows = [padded[i : i + 4, j : j + 4] for i in range(3) for j in range(3)]
    allowed = windows + [w[:, ::-1] for w in windows]
    seen = set()
    for k in range(64):
        out = np.asarray(data.augment_image(image, [k, 7], crop_padding=1))
        match = [m for m, w in enumerate(allowed) if np.array_equal(out, w)]
        assert match, out[..., 0]
        seen.add(match[0])
        again = data.augment_image(image, [k, 7], crop_padding=1)
        np.testing.assert_array_equal(out, np.asarray(again))
    # 64 seeds over 18 equally likely outcomes: all but a few appear (the
    # chance that a given outcome is missed is (17/18)**64 < 3%).
    assert len(seen) >= 12
    unchanged = data.augment_image(image, [0, 0], crop_padding=0, flip=False)
    np.testing.assert_array_equal(np.asarray(unchanged), image)


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cifar.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--dataset",
        "--data-dir",
        "--model",
        "--num-steps",
        "--epochs",
        "--batch-size",
        "--train-size",
        "--test-size",
        "--seed",
        "--output",
        "--export",
        "--strategy",
    ):
        assert flag in text


def _saved_model_cli(command, export_dir, *args):
    """Runs `saved_model_cli COMMAND` on the serving signature; its stdout."""
    return subprocess.run(
        [
            str(SAVED_MODEL_CLI),
            command,
            "--dir",
            str(export_dir),
            "--tag_set",
            "serve",
            "--signature_def",
            "serve",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.slow
def test_end_to_end_run_and_export(tfds_data_dir, tmp_path):
    output = tmp_path / "run"
    argv = [
        "--data-dir",
        tfds_data_dir,
        "--epochs",
        "1",
        "--train-size",
        "512",
        "--test-size",
        "256",
        # A small NAIS-Net keeps the test within its time budget.
        "--blocks-per-stage",
        "1",
        "--num-steps",
        "2",
        "--output",
        str(output),
        "--verbose",
        "0",
    ]
    export_dir = tmp_path / "savedmodel"
    if backend() == "tensorflow":
        argv += ["--export", str(export_dir)]
    results = cifar.main(argv)

    saved = json.loads((output / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for key in (
        "train_accuracy",
        "test_accuracy",
        "generalization_gap",
        "wall_time_s",
    ):
        assert math.isfinite(saved[key]), key
    assert 0 <= saved["train_accuracy"] <= 1
    assert 0 <= saved["test_accuracy"] <= 1
    assert saved["generalization_gap"] == pytest.approx(
        saved["train_accuracy"] - saved["test_accuracy"]
    )
    assert saved["epochs"] == 1 and saved["params"] == 75_450
    assert saved["dataset"] == "cifar10" and saved["model"] == "naisnet"
    with open(output / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    assert {"accuracy", "loss", "val_accuracy", "val_loss"} <= set(rows[0])
    assert math.isfinite(float(rows[0]["val_loss"]))
    png = (output / "learning_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    reloaded = keras.models.load_model(output / "model.keras")
    assert reloaded.count_params() == 75_450

    if backend() != "tensorflow":
        pytest.skip(
            "The SavedModel export is checked on TensorFlow only; the rest "
            f"of the run passed on {backend()}."
        )
    # The program already reloaded it in a fresh process and compared.
    assert saved["export_max_abs_error"] <= cifar.EXPORT_ATOL
    shown = _saved_model_cli("show", export_dir)
    assert "inputs['images']" in shown and "(-1, 10)" in shown
    # A serving client's view: the saved batch of test images in, logits
    # out, equal to the trained model's.
    outdir = tmp_path / "cli_out"
    _saved_model_cli(
        "run",
        export_dir,
        "--inputs",
        f"images={output / 'serving_batch.npy'}",
        "--outdir",
        str(outdir),
    )
    (logits_file,) = outdir.glob("*.npy")
    logits = np.load(logits_file)
    batch = np.load(output / "serving_batch.npy")
    expected = keras.ops.convert_to_numpy(reloaded(batch))
    assert logits.shape == (len(batch), 10)
    np.testing.assert_allclose(logits, expected, atol=cifar.EXPORT_ATOL)


def _fake_results(path, model, train, test, seed=0):
    path.mkdir(parents=True)
    results = dict(
        model=model,
        seed=seed,
        dataset="cifar10",
        train_accuracy=train,
        test_accuracy=test,
        generalization_gap=train - test,
        params=1234,
        wall_time_s=5.0,
        num_steps=3 if model != "resnet" else None,
        blocks_per_stage=3,
        epochs=2,
        train_split="train[:100]",
        test_split="test[:50]",
        batch_size=32,
        backend="tensorflow",
    )
    (path / "results.json").write_text(json.dumps(results))


def test_compare_collects_a_markdown_table(tmp_path):
    _fake_results(tmp_path / "a", "naisnet", 0.75, 0.5)
    _fake_results(tmp_path / "b", "resnet", 0.875, 0.5)
    compare.main(
        [
            "--collect",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "--output",
            str(tmp_path / "table"),
        ]
    )
    lines = (tmp_path / "table" / "results.md").read_text().splitlines()
    assert (
        "| naisnet | 3 x 3 | 1,234 | 75.00% | 50.00% | 25.00 | 5 s |" in lines
    )
    assert "| resnet | 3 x - | 1,234 | 87.50% | 50.00% | 37.50 | 5 s |" in lines
    assert not any("seeds" in line for line in lines)


def test_compare_averages_repeated_models(tmp_path):
    # Two seeds of naisnet: train 75% and 80%, test 50% and 60%. By hand:
    # means 77.5, 55 and gap 22.5; sample deviations sqrt(12.5) = 3.54,
    # sqrt(50) = 7.07 and sqrt(12.5) = 3.54 (gaps 25 and 20).
    _fake_results(tmp_path / "a", "naisnet", 0.75, 0.5, seed=0)
    _fake_results(tmp_path / "b", "naisnet", 0.8, 0.6, seed=1)
    _fake_results(tmp_path / "c", "resnet", 0.875, 0.5)
    compare.main(
        ["--collect"]
        + [str(tmp_path / d) for d in "abc"]
        + ["--output", str(tmp_path / "table")]
    )
    lines = (tmp_path / "table" / "results.md").read_text().splitlines()
    assert (
        "| naisnet | 0, 1 | 77.50 +- 3.54% | 55.00 +- 7.07% | 22.50 +- 3.54 |"
        in lines
    )
    assert not any(line.startswith("| resnet | 0") for line in lines)


def test_compare_rejects_unknown_models():
    with pytest.raises(ValueError, match="Received: models='vgg'"):
        compare.main(["--models", "vgg"])
