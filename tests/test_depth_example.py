"""End to end: `examples/depth.py` on tiny CIFAR-10 models."""

import csv
import importlib.util
import json
import math

import keras
import numpy as np
import pytest

from keras_naisnet import models
from tests.conftest import REPO


def _load_example():
    spec = importlib.util.spec_from_file_location(
        "depth_example", REPO / "examples" / "depth.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save_run(folder, name, rng):
    """A model folder as examples/cifar.py writes it, after one fit step."""
    model = models.build_model(
        name, num_steps=2, blocks_per_stage=1, num_classes=10
    )
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(
        rng.uniform(size=(16, 32, 32, 3)).astype("float32"),
        rng.integers(0, 10, size=16),
        epochs=1,
        verbose=0,
    )
    folder.mkdir()
    model.save(folder / "model.keras")
    results = {"model": name, "num_steps": 2, "dataset": "cifar10"}
    (folder / "results.json").write_text(json.dumps(results))


def test_help_lists_the_options(capsys):
    example = _load_example()
    with pytest.raises(SystemExit):
        example.main(["--help"])
    text = capsys.readouterr().out
    for option in (
        "--model-dir",
        "--data-dir",
        "--test-size",
        "--tol",
        "--max-steps",
        "--output",
    ):
        assert option in text


def test_runs_of_one_architecture_are_labelled_by_folder():
    example = _load_example()
    assert example.run_labels(["a/x", "b/y"], ["naisnet", "resnet"]) == [
        "naisnet",
        "resnet",
    ]
    assert example.run_labels(
        ["runs/naisnet", "runs/naisnet-relu", "runs/resnet"],
        ["naisnet", "naisnet", "resnet"],
    ) == ["naisnet", "naisnet-relu", "resnet"]


@pytest.mark.slow
def test_depth_example_writes_every_file(tmp_path, tfds_data_dir, rng):
    stable = tmp_path / "naisnet"
    unconstrained = tmp_path / "naisnet-unconstrained"
    _save_run(stable, "naisnet", rng)
    _save_run(unconstrained, "naisnet-unconstrained", rng)
    output = tmp_path / "depth"
    summary = _load_example().main(
        [
            "--model-dir",
            str(stable),
            str(unconstrained),
            "--data-dir",
            tfds_data_dir,
            "--test-size",
            "200",
            "--tol",
            "1e-2",
            "--max-steps",
            "6",
            "--unroll-steps",
            "1,2,4",
            "--output",
            str(output),
        ]
    )
    for name in (
        "depth_histograms.png",
        "images_by_depth.png",
        "trajectories.png",
        "accuracy_by_depth.png",
    ):
        assert (output / name).stat().st_size > 1000, name
    markdown = (output / "summary.md").read_text()
    assert "naisnet-unconstrained" in markdown and "| class |" in markdown
    with open(output / "depth_per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 200
    blocks = [k for k in rows[0] if k.startswith("steps_")]
    assert len(blocks) == 3
    for row in rows:
        steps = [int(row[k]) for k in blocks]
        assert all(1 <= s <= 6 for s in steps)
        assert int(row["depth"]) == sum(steps)
    with open(output / "accuracy_by_depth.csv") as handle:
        sweep = list(csv.DictReader(handle))
    assert [(r["model"], r["num_steps"]) for r in sweep] == [
        (m, d) for m in ("naisnet", "naisnet-unconstrained") for d in "124"
    ]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in sweep)
    with open(output / "depth_per_class.csv") as handle:
        per_class = list(csv.DictReader(handle))
    assert len(per_class) == 10
    assert all(math.isfinite(float(r["mean depth"])) for r in per_class)
    assert summary["test_images"] == 200
    assert math.isfinite(summary["mean_depth"])
    # The stable model passes its check; the report is in the summary.
    assert summary["models"][0]["stability_check_passed"]
    saved = json.loads((output / "summary.json").read_text())
    assert saved["blocks"] == summary["blocks"]
    assert np.isfinite(saved["adaptive_accuracy"])
