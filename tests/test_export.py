"""Export through `model.export`, reloaded by each format's own runtime.

A model with both blocks (conv, then dense) is exported at fixed depth and
with adaptive depth (a data-dependent while loop), reloaded without
`keras_naisnet`, and run on inputs whose samples settle after different
numbers of steps; the outputs must match the live model.

What works where (Keras 3.15.1, TensorFlow 2.21, JAX 0.10, torch 2.13),
for fixed and adaptive depth alike:

- SavedModel: TensorFlow yes; JAX yes, adaptive depth needs
  `jax2tf_kwargs={"with_gradient": False}`; torch no (Keras's torch
  SavedModel export fails for a plain Dense model too: skipped, checked).
- ONNX: TensorFlow and torch yes; JAX no (Keras needs the `jax2onnx`
  package, not a dependency).
- LiteRT: TensorFlow yes (`format="litert"`); JAX yes, through the JAX
  SavedModel and `tf.lite.TFLiteConverter`; torch no (Keras needs the
  `litert-torch` package, not a dependency).
"""

import keras
import numpy as np
import pytest

from keras_naisnet import NaisConvBlock
from keras_naisnet import NaisDenseBlock
from keras_naisnet import stability
from tests import hardmode_utils as hm

BACKEND = keras.backend.backend()
ADAPTIVE = {"tol": 1e-3, "max_steps": 40}
# Float32 on both sides; the runtimes fuse and reorder a few operations.
# Measured differences are below 2e-6.
ATOL = 1e-5
DEPTHS = ("fixed", "adaptive")


def _model(depth):
    kwargs = ADAPTIVE if depth == "adaptive" else {}
    return keras.Sequential(
        [
            keras.Input(hm.IMAGE_SHAPE),
            NaisConvBlock(4, num_steps=2, name="conv_block", **kwargs),
            keras.layers.GlobalAveragePooling2D(),
            NaisDenseBlock(4, num_steps=2, name="dense_block", **kwargs),
        ]
    )


def _inputs():
    x, _ = hm.make_inputs("conv", batch=6, seed=1)
    # Different input scales settle after different numbers of steps, so a
    # trip count frozen at export time would show.
    scales = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 3.0], "float32")
    return x * scales[:, None, None, None]


def _live(model, depth):
    x = _inputs()
    expected = np.asarray(model.predict(x, verbose=0))
    # Keras's ONNX export needs a model that was called eagerly.
    model(x[:1])
    if depth == "adaptive":
        counting = stability.with_unroll(model, return_steps=True, **ADAPTIVE)
        _, steps = counting.predict(x, verbose=0)
        assert len(np.unique(steps[:, 0])) > 1, "depths should differ"
        assert np.all(steps < ADAPTIVE["max_steps"])
    return x, expected


def _run_litert(path, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _check_outputs(run, x, expected):
    np.testing.assert_allclose(run(x), expected, rtol=ATOL, atol=ATOL)
    # A second batch size: the exported batch dimension is dynamic.
    np.testing.assert_allclose(run(x[:3]), expected[:3], rtol=ATOL, atol=ATOL)


def _skip_if_keras_cannot_export_plain_model(path, fmt, error):
    """Skips when Keras cannot export even a model without NAIS blocks."""
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    plain(np.zeros((1, 3), "float32"))
    try:
        plain.export(str(path) + "_plain", format=fmt, verbose=False)
    except Exception as plain_error:
        pytest.skip(
            f"Keras {keras.__version__} on {BACKEND} cannot export a plain "
            f"Dense model to {fmt!r} either ({type(plain_error).__name__}: "
            f"{str(plain_error)[:150]}); the block raised "
            f"{type(error).__name__}."
        )
    raise error


def _export_saved_model(model, path, depth):
    kwargs = {}
    if BACKEND == "jax" and depth == "adaptive":
        # jax2tf traces gradients by default, and a data-dependent
        # while loop has none in JAX.
        kwargs["jax2tf_kwargs"] = {"with_gradient": False}
    try:
        model.export(
            str(path), format="tf_saved_model", verbose=False, **kwargs
        )
    except Exception as error:
        _skip_if_keras_cannot_export_plain_model(path, "tf_saved_model", error)


@pytest.mark.parametrize("depth", DEPTHS)
def test_saved_model(tmp_path, depth):
    import tensorflow as tf

    model = _model(depth)
    x, expected = _live(model, depth)
    path = tmp_path / "saved_model"
    _export_saved_model(model, path, depth)
    reloaded = tf.saved_model.load(str(path))
    _check_outputs(lambda v: reloaded.serve(v).numpy(), x, expected)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX-specific export option.")
def test_jax_saved_model_with_adaptive_depth_needs_no_gradient(tmp_path):
    # Documents why `jax2tf_kwargs={"with_gradient": False}` is needed.
    model = _model("adaptive")
    _live(model, "adaptive")
    with pytest.raises(ValueError, match="gradients"):
        model.export(
            str(tmp_path / "sm"), format="tf_saved_model", verbose=False
        )


@pytest.mark.skipif(
    BACKEND == "jax",
    reason="Keras exports ONNX from JAX through the jax2onnx package, which "
    "is not a dependency; tf2onnx cannot convert the XlaCallModule op of a "
    "JAX SavedModel either.",
)
@pytest.mark.parametrize("depth", DEPTHS)
def test_onnx(tmp_path, depth):
    import onnxruntime

    model = _model(depth)
    x, expected = _live(model, depth)
    path = tmp_path / "model.onnx"
    model.export(str(path), format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(str(path))
    name = session.get_inputs()[0].name
    _check_outputs(lambda v: session.run(None, {name: v})[0], x, expected)


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="Keras exports LiteRT from torch through the litert-torch "
    "package, which is not a dependency, and torch cannot export a "
    "SavedModel to convert instead.",
)
@pytest.mark.parametrize("depth", DEPTHS)
def test_litert(tmp_path, depth):
    model = _model(depth)
    x, expected = _live(model, depth)
    path = tmp_path / "model.tflite"
    if BACKEND == "tensorflow":
        model.export(str(path), format="litert", verbose=False)
    else:
        # JAX: the SavedModel, then TensorFlow's LiteRT converter.
        import tensorflow as tf

        _export_saved_model(model, tmp_path / "saved_model", depth)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(tmp_path / "saved_model")
        )
        path.write_bytes(converter.convert())
    _check_outputs(lambda v: _run_litert(path, v), x, expected)
