"""Trains NAIS-Net or a ResNet baseline on CIFAR-10/100 and exports it.

The paper's image-classification experiment (Ciccone et al., NeurIPS 2018)
as one command:

    python examples/cifar.py --dataset cifar10 --model naisnet \\
        --epochs 5 --train-size 10000 --test-size 2000 \\
        --output runs/naisnet --export runs/naisnet/savedmodel

Recipe (this library's choice; the paper does not publish its settings):
random crop after 4-pixel zero padding and horizontal flip, SGD with
Nesterov momentum 0.9, learning rate 0.05 with cosine decay to 0 over the
run, batch 128, weight decay 5e-4 on the stem, input convolutions and
classifier (not on the NAIS state kernels), cross-entropy on logits.

Outputs in `--output`:
- `history.csv`: per epoch, the running training loss and accuracy on the
  augmented batches and the test loss and accuracy (`val_*`, on the first
  `--val-size` test images);
- `results.json`: final `train_accuracy` (evaluated after training on the
  un-augmented training images used for training), `test_accuracy`,
  `generalization_gap` (their difference), `epochs`, `wall_time_s`
  (training only), `params`, `dataset`, `model` and the other settings;
- `learning_curves.png`: training and test accuracy per epoch;
- `model.keras`: the trained model (`keras.models.load_model`).

`--export DIR` writes a TensorFlow SavedModel with `model.export`, reloads
it in a fresh Python process that does not import `keras_naisnet`, and
fails unless its logits equal the live model's on a batch of test images;
it also writes `serving_batch.npy`, a batch of test images, into the
output folder for `saved_model_cli run`.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_naisnet import data  # noqa: E402
from keras_naisnet import models  # noqa: E402
from keras_naisnet import plotting  # noqa: E402

DATASETS = ("cifar10", "cifar100")
# Logits of a reloaded SavedModel may differ from the live model's by
# float32 rounding (different op fusion); anything larger is a bug.
EXPORT_ATOL = 1e-4

_RELOAD_SCRIPT = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf
export_dir, batch_path, out_path = sys.argv[1:4]
loaded = tf.saved_model.load(export_dir)
logits = loaded.serve(tf.constant(np.load(batch_path)))
np.save(out_path, np.asarray(logits))
assert "keras_naisnet" not in sys.modules, "the reload imported keras_naisnet"
"""


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer. Received: {text}"
        )
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"must be a positive number. Received: {text}"
        )
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        description=(
            "Train NAIS-Net or a ResNet baseline on CIFAR-10/100 (TFDS) "
            "and optionally export a SavedModel."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dataset", choices=DATASETS, default="cifar10")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="TFDS data directory (default: $TFDS_DATA_DIR, then the TFDS "
        "default, where the data is downloaded on first use)",
    )
    parser.add_argument(
        "--model",
        choices=tuple(models.MODELS),
        default="naisnet",
        help="architecture, see keras_naisnet.models",
    )
    parser.add_argument(
        "--num-steps",
        type=_positive_int,
        default=3,
        help="unroll steps per block (not used by 'resnet')",
    )
    parser.add_argument("--blocks-per-stage", type=_positive_int, default=3)
    parser.add_argument(
        "--activation",
        choices=("relu", "tanh"),
        default="tanh",
        help="activation inside the steps of the NAIS family",
    )
    parser.add_argument(
        "--state-centre",
        type=float,
        default=-1.0,
        help="initial centre taps of the NAIS state kernels, in "
        "[-2 + eta, -eta] (-1: unit gain at equilibrium)",
    )
    parser.add_argument("--epochs", type=_positive_int, default=10)
    parser.add_argument("--batch-size", type=_positive_int, default=128)
    parser.add_argument(
        "--train-size",
        type=_positive_int,
        default=None,
        help="train on the first N training images (default: all)",
    )
    parser.add_argument(
        "--test-size",
        type=_positive_int,
        default=None,
        help="evaluate on the first N test images (default: all)",
    )
    parser.add_argument(
        "--val-size",
        type=_positive_int,
        default=None,
        help="evaluate the learning curve on the first N test images after "
        "each epoch (default: the --test-size images); the final test "
        "accuracy always uses all --test-size images",
    )
    parser.add_argument("--learning-rate", type=_positive_float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument(
        "--no-augment",
        action="store_true",
        help="train without random crops and flips",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output",
        default="runs/cifar",
        help="folder for history.csv, results.json, the PNG and model.keras",
    )
    parser.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="write a SavedModel here and check it in a fresh process",
    )
    parser.add_argument(
        "--strategy",
        choices=("default", "mirrored"),
        default="default",
        help="tf.distribute strategy (mirrored: TensorFlow backend only)",
    )
    parser.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="Keras verbosity (1: progress bar)",
    )
    return parser


def _strategy_scope(name):
    if name == "default":
        return None
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "`--strategy mirrored` needs KERAS_BACKEND=tensorflow. "
            f"Received: strategy={name!r} on {keras.backend.backend()!r}"
        )
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


def _split(name, size):
    return name if size is None else f"{name}[:{size}]"


def _to_builtin(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def export_and_check(model, export_dir, images, work_dir=None):
    """Exports `model` as a SavedModel and checks it in a fresh process.

    The fresh Python process loads the SavedModel with
    `tf.saved_model.load` (without importing `keras_naisnet`) and runs its
    `serve` signature on `images`.

    Args:
        model: a Keras model.
        export_dir: folder of the SavedModel.
        images: float32 array, a batch of inputs.
        work_dir: folder for the exchange files (default: a temporary one).

    Returns:
        The largest absolute difference between the logits.

    Raises:
        RuntimeError: when the reload fails or the logits differ by more
            than `EXPORT_ATOL`.
    """
    model.export(str(export_dir), format="tf_saved_model", verbose=False)
    expected = np.asarray(model.predict(images, verbose=0))
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        batch_path = os.path.join(tmp, "batch.npy")
        out_path = os.path.join(tmp, "logits.npy")
        np.save(batch_path, images)
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                _RELOAD_SCRIPT,
                str(export_dir),
                batch_path,
                out_path,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        )
        if result.returncode != 0:
            raise RuntimeError(
                "Reloading the SavedModel in a fresh process failed:\n"
                + result.stderr[-4000:]
            )
        reloaded = np.load(out_path)
    if reloaded.shape != expected.shape:
        raise RuntimeError(
            f"The SavedModel returned logits of shape {reloaded.shape}, the "
            f"live model {expected.shape}."
        )
    error = float(np.max(np.abs(reloaded - expected)))
    if not error <= EXPORT_ATOL:
        raise RuntimeError(
            "The SavedModel's logits differ from the live model's by "
            f"{error:.3g} (tolerance {EXPORT_ATOL})."
        )
    return error


def main(argv=None):
    """Runs the command line program; returns the results dict."""
    args = build_parser().parse_args(argv)
    if args.export and keras.backend.backend() != "tensorflow":
        # TODO: model.export also works from JAX (through jax2tf); enable
        # it here once that path is tested.
        raise ValueError(
            "`--export` needs KERAS_BACKEND=tensorflow. Received: "
            f"backend={keras.backend.backend()!r}"
        )
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    info = data.dataset_info(args.dataset, args.data_dir)
    train_split = _split("train", args.train_size)
    test_split = _split("test", args.test_size)
    load = dict(
        dataset=args.dataset,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        seed=args.seed,
    )
    train_ds = data.load_image_classification(
        split=train_split, augment=not args.no_augment, shuffle=True, **load
    )
    train_eval_ds = data.load_image_classification(
        split=train_split, augment=False, shuffle=False, **load
    )
    test_ds = data.load_image_classification(
        split=test_split, augment=False, shuffle=False, **load
    )
    val_ds = test_ds
    if args.val_size is not None:
        val_size = min(args.val_size, args.test_size or args.val_size)
        val_ds = data.load_image_classification(
            split=_split("test", val_size),
            augment=False,
            shuffle=False,
            **load,
        )
    train_size = args.train_size or info["splits"]["train"]
    train_size = min(train_size, info["splits"]["train"])
    steps_per_epoch = -(-train_size // args.batch_size)

    strategy = _strategy_scope(args.strategy)
    scope = strategy.scope() if strategy else _NullScope()
    with scope:
        model = models.build_model(
            args.model,
            num_steps=args.num_steps,
            blocks_per_stage=args.blocks_per_stage,
            num_classes=info["num_classes"],
            input_shape=info["image_shape"],
            activation=args.activation,
            state_centre=args.state_centre,
            weight_decay=args.weight_decay,
        )
        schedule = keras.optimizers.schedules.CosineDecay(
            args.learning_rate, decay_steps=args.epochs * steps_per_epoch
        )
        model.compile(
            optimizer=keras.optimizers.SGD(
                schedule, momentum=args.momentum, nesterov=True
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    params = int(model.count_params())
    if args.verbose:
        print(
            f"{args.model}: {params:,} parameters; {args.dataset} "
            f"{train_split} / {test_split}; backend "
            f"{keras.backend.backend()}"
        )

    start = time.perf_counter()
    model.fit(
        train_ds,
        epochs=args.epochs,
        validation_data=val_ds,
        # The pipeline shuffles; `fit` cannot shuffle a tf.data.Dataset.
        shuffle=False,
        callbacks=[keras.callbacks.CSVLogger(str(output / "history.csv"))],
        verbose=args.verbose,
    )
    wall_time = time.perf_counter() - start

    train_eval = model.evaluate(train_eval_ds, verbose=0, return_dict=True)
    test_eval = model.evaluate(test_ds, verbose=0, return_dict=True)
    model.save(output / "model.keras")
    plotting.plot_learning_curves(
        output / "history.csv",
        output / "learning_curves.png",
        title=f"{args.model} on {args.dataset} ({train_split})",
    )
    results = {
        "dataset": args.dataset,
        "model": args.model,
        "train_accuracy": float(train_eval["accuracy"]),
        "test_accuracy": float(test_eval["accuracy"]),
        "generalization_gap": float(
            train_eval["accuracy"] - test_eval["accuracy"]
        ),
        "train_loss": float(train_eval["loss"]),
        "test_loss": float(test_eval["loss"]),
        "train_accuracy_measured_on": (
            f"{train_split} without augmentation, after training"
        ),
        "epochs": args.epochs,
        "wall_time_s": round(wall_time, 1),
        "params": params,
        "num_steps": args.num_steps if args.model != "resnet" else None,
        "blocks_per_stage": args.blocks_per_stage,
        "activation": args.activation if args.model != "resnet" else None,
        "state_centre": args.state_centre if args.model != "resnet" else None,
        "train_split": train_split,
        "test_split": test_split,
        "val_size": args.val_size,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "augment": not args.no_augment,
        "seed": args.seed,
        "strategy": args.strategy,
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
    }
    if args.export:
        images = next(iter(test_ds))[0].numpy()[:32].astype("float32")
        np.save(output / "serving_batch.npy", images)
        error = export_and_check(model, args.export, images, work_dir=output)
        results["export_dir"] = str(args.export)
        results["export_max_abs_error"] = error
        if args.verbose:
            print(
                f"SavedModel in {args.export}: reloaded without "
                f"keras_naisnet, logits match (max |diff| {error:.2e})."
            )
    results = {k: _to_builtin(v) for k, v in results.items()}
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.verbose:
        print(
            f"train accuracy {results['train_accuracy']:.4f}, test accuracy "
            f"{results['test_accuracy']:.4f}, gap "
            f"{results['generalization_gap']:.4f}, {wall_time:.0f} s; "
            f"results in {output}"
        )
    return results


class _NullScope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
