"""Smoke tests of `benchmarks/run.py` with its smallest settings.

The script runs in a fresh process on the current backend with `--quick`
and `--json`; the tests check that every item produced its rows, that every
ratio of times is a finite positive number (the memory slope of a quick run
is only finite: it may be of either sign) and that the hardware description
names the backend. The numbers of a quick run mean nothing: only the code
paths are checked.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import keras
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run.py"


def _run(items, tmp_path, data_dir=None):
    out = tmp_path / "rows.json"
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    if data_dir is not None:
        env["TFDS_DATA_DIR"] = data_dir
    command = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--items",
        ",".join(items),
        "--json",
        str(out),
    ]
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| measurement |" in result.stdout
    report = json.loads(out.read_text())
    assert report["hardware"]["backend"].startswith(keras.backend.backend())
    assert report["hardware"]["cores"] >= 1
    for row in report["rows"]:
        assert math.isfinite(row["ratio"]), row
        if row["a"] is not None:
            # A ratio of two measured times or rates.
            assert row["ratio"] > 0 and row["a"] > 0 and row["b"] > 0, row
    return [row["item"] for row in report["rows"]]


def test_quick_block_items(tmp_path):
    tensorflow = keras.backend.backend() == "tensorflow"
    # `modes` and `jit` build five more models; their code is the `block`
    # item's, so other backends skip them to keep the CI budget.
    extra = ["modes", "jit"] if tensorflow else []
    items = _run(["block", "memory"] + extra, tmp_path)
    assert "train step: NaisConvBlock / hand loop" in items
    assert "projection / train step" in items
    assert "peak memory slope / state size" in items
    if tensorflow:
        assert "train step: stability=reparametrization / projection" in items
        assert "train step: jit_compile=True / False" in items


@pytest.mark.slow
def test_quick_cifar_items(tmp_path, tfds_data_dir):
    if keras.backend.backend() != "tensorflow":
        pytest.skip(
            "The CIFAR-10 items (whole models, input pipeline, adaptive "
            "depth) run backend-neutral Keras code (checked by hand on JAX "
            "and PyTorch), but cost 30 to 120 s per backend on a 2-core "
            "CPU; CI covers them on TensorFlow only."
        )
    items = _run(["models", "depth"], tmp_path, tfds_data_dir)
    assert any(item.startswith("training images/s: NAIS-Net") for item in items)
    assert any(item.startswith("input pipeline alone") for item in items)
    assert any(item.startswith("inference images/s: tol=") for item in items)
