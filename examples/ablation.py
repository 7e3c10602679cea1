"""The NAIS-Net stability study on Fashion-MNIST.

Trains one deep stage (`--num-steps` residual layers, default 30) in every
switch combination of the study (shared weights SH, non-autonomous input
skip NA, batch norm BN, stability projection Stable; see
`keras_naisnet.ablation`) with the same budget, then unrolls each trained
stage from 1 to 3 times its training depth on the test images.

The paper ran this study on MNIST; this script uses Fashion-MNIST, a
harder drop-in replacement with the same image size and number of
classes. The stage is fully connected (`NaisDenseBlock` for NAIS-Net).

Outputs, in `--output`:
- `results.md` and `results.csv`: train and test loss and accuracy of
  each variant at the training depth (both in inference mode), its
  accuracy during the last epoch of training (training mode: batch
  statistics), its test loss at 3 K, and the largest `|eigenvalue|` of
  the step matrix `I + h A_k` after training (`radius`; at most
  `1 - epsilon` under the projection);
- `loss_by_depth.png` and `loss_by_depth.csv`: test loss and accuracy
  against the number of unroll steps at evaluation, 1 .. 3 K;
- `trajectories.png` and `trajectories.csv`: one state unit over the
  steps for test images of each class (NAIS-Net and its unprojected and
  autonomous counterparts; written when `--variants` holds any of them);
- `settling.csv`: per variant and class, the unit's mean value at 3 K
  and the mean step after which the state stops moving;
- `history/<variant>.csv`: the training curves (`keras.callbacks.CSVLogger`).

Usage:

    python examples/ablation.py --epochs 5 --train-size 10000 \\
        --output ablation_results
"""

import argparse
import csv
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_naisnet import ablation  # noqa: E402
from keras_naisnet import plotting  # noqa: E402

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# The variants whose single-unit trajectories are drawn: NAIS-Net, the
# same stage without the projection, and the stable autonomous stage.
TRAJECTORY_VARIANTS = ("NAIS-Net", "ResNet-SH-NA", "ResNet-SH-Stable")
# A state has settled once the root mean square of its step change is at
# most this (the `tol` of adaptive depth).
SETTLING_TOL = 1e-3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "NAIS-Net stability study (SH / NA / BN / Stable switches) on "
            "Fashion-MNIST, a harder drop-in replacement for the paper's "
            "MNIST."
        )
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--train-size",
        type=int,
        default=10000,
        help="first N training images (train[:N])",
    )
    parser.add_argument(
        "--test-size", type=int, default=10000, help="first N test images"
    )
    parser.add_argument(
        "--num-steps", type=int, default=30, help="training depth K"
    )
    parser.add_argument("--units", type=int, default=64, help="state size")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--eval-factor",
        type=int,
        default=3,
        help="unroll to eval-factor * K at evaluation (at least 3)",
    )
    parser.add_argument(
        "--images-per-class",
        type=int,
        default=5,
        help="test images per class in the trajectory plot",
    )
    parser.add_argument(
        "--variants",
        default=",".join(ablation.STUDY_VARIANTS),
        help="comma-separated subset of the study's variants",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="TFDS data directory (default: $TFDS_DATA_DIR, then TFDS's)",
    )
    parser.add_argument("--output", default="ablation_results")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in (
        "epochs",
        "train_size",
        "test_size",
        "num_steps",
        "units",
        "batch_size",
        "images_per_class",
    ):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be a positive integer. "
                f"Received: {getattr(args, name)}"
            )
    if args.eval_factor < 3:
        parser.error(
            f"--eval-factor must be at least 3. Received: {args.eval_factor}"
        )
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in ablation.STUDY_VARIANTS]
    if unknown or not args.variants:
        parser.error(
            f"--variants must name some of {tuple(ablation.STUDY_VARIANTS)}. "
            f"Received: {unknown or args.variants}"
        )
    return args


def load_fashion_mnist(split, data_dir=None):
    """Images as float32 in [0, 1], shape (n, 28, 28, 1), and int labels."""
    import tensorflow_datasets as tfds

    images, labels = tfds.as_numpy(
        tfds.load(
            "fashion_mnist",
            split=split,
            data_dir=data_dir,
            batch_size=-1,
            as_supervised=True,
        )
    )
    return images.astype("float32") / 255.0, labels.astype("int32")


def train_variant(name, data, args, history_dir):
    """Trains one variant; returns the model and its row of the table."""
    train_images, train_labels, test_images, test_labels = data
    # The same seed for every variant: same initial projection, same
    # classifier initialization, same batch order.
    keras.utils.set_random_seed(args.seed)
    model = ablation.build_ablation_model(
        name, units=args.units, num_steps=args.num_steps
    )
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.time()
    history = model.fit(
        train_images,
        train_labels,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=0,
        callbacks=[keras.callbacks.CSVLogger(str(history_dir / f"{name}.csv"))],
    )
    seconds = time.time() - start
    # Both sets in inference mode (moving batch-norm statistics).
    train_loss, train_acc = model.evaluate(
        train_images, train_labels, batch_size=500, verbose=0
    )
    test_loss, test_acc = model.evaluate(
        test_images, test_labels, batch_size=500, verbose=0
    )
    row = {
        "variant": name,
        "params": model.count_params(),
        # Training mode (batch statistics), averaged over the last epoch.
        "fit_accuracy": history.history["accuracy"][-1],
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "step_radius": ablation.step_matrix_radius(model.get_layer("stage")),
        "train_seconds": seconds,
    }
    return model, row


def settling_step(states, tol=SETTLING_TOL):
    """First step k after which every later step change has RMS <= tol.

    `states` has shape (n, steps + 1, units). Returns an int array (n,);
    a trajectory still moving at the last step gets `steps`.
    """
    delta = np.sqrt(np.mean(np.square(np.diff(states, axis=1)), axis=-1))
    moving = delta > tol
    steps = delta.shape[1]
    # Index of the last moving step, + 1; 0 when it never moved.
    last = steps - np.argmax(moving[:, ::-1], axis=1)
    return np.where(moving.any(axis=1), last, 0)


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows, max_steps):
    lines = [
        "| variant | params | fit acc | train loss | train acc | test loss "
        f"| test acc | test loss at {max_steps} steps | radius | fit time |",
        "| --- |" + " ---: |" * 9,
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['params']:,} "
            f"| {100 * row['fit_accuracy']:.1f}% "
            f"| {row['train_loss']:.3f} | {100 * row['train_accuracy']:.1f}% "
            f"| {row['test_loss']:.3f} | {100 * row['test_accuracy']:.1f}% "
            f"| {row['test_loss_max_steps']:.3f} "
            f"| {row['step_radius']:.3f} "
            f"| {row['train_seconds']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def pick_images(labels, per_class):
    """The first `per_class` test images of each class present."""
    indices = []
    for label in range(len(CLASS_NAMES)):
        indices.extend(np.flatnonzero(labels == label)[:per_class].tolist())
    return np.asarray(indices, dtype="int64")


def pick_unit(states, labels, num_steps):
    """The unit whose state at K varies most between the class means."""
    at_k = states[:, num_steps, :]
    means = [at_k[labels == c].mean(axis=0) for c in np.unique(labels)]
    return int(np.argmax(np.var(np.stack(means), axis=0)))


def main(argv=None):
    args = parse_args(argv)
    output = pathlib.Path(args.output)
    history_dir = output / "history"
    history_dir.mkdir(parents=True, exist_ok=True)
    max_steps = args.eval_factor * args.num_steps

    train_images, train_labels = load_fashion_mnist(
        f"train[:{args.train_size}]", args.data_dir
    )
    test_images, test_labels = load_fashion_mnist(
        f"test[:{args.test_size}]", args.data_dir
    )
    data = (train_images, train_labels, test_images, test_labels)
    print(
        f"Fashion-MNIST: {len(train_images)} train / {len(test_images)} test "
        f"images; K={args.num_steps}, units={args.units}, "
        f"{args.epochs} epochs, backend {keras.backend.backend()}"
    )
    chosen = pick_images(test_labels, args.images_per_class)

    rows, depth_rows, trajectory_rows, settling_rows = [], [], [], []
    curves, panels = {}, []
    for name in args.variants:
        model, row = train_variant(name, data, args, history_dir)
        depth = ablation.evaluate_by_depth(
            model, test_images, test_labels, max_steps
        )
        row["test_loss_max_steps"] = float(depth["loss"][-1])
        rows.append(row)
        curves[name] = (depth["num_steps"], depth["loss"])
        for k, loss, acc in zip(
            depth["num_steps"], depth["loss"], depth["accuracy"]
        ):
            depth_rows.append(
                {
                    "variant": name,
                    "num_steps": int(k),
                    "test_loss": float(loss),
                    "test_accuracy": float(acc),
                }
            )
        print(
            f"{name:>16}: train acc {100 * row['train_accuracy']:.1f}%, "
            f"test acc {100 * row['test_accuracy']:.1f}%, test loss "
            f"{row['test_loss']:.3f} at K, {row['test_loss_max_steps']:.3f} "
            f"at {max_steps}, fit {row['train_seconds']:.0f} s"
        )
        if name not in TRAJECTORY_VARIANTS:
            continue
        states = ablation.state_trajectories(
            model, test_images[chosen], max_steps
        )
        labels = test_labels[chosen]
        unit = pick_unit(states, labels, args.num_steps)
        settled = settling_step(states)
        panels.append((name, unit, states[:, :, unit], labels))
        for i, image in enumerate(chosen):
            for k in range(max_steps + 1):
                trajectory_rows.append(
                    {
                        "variant": name,
                        "unit": unit,
                        "test_index": int(image),
                        "label": int(labels[i]),
                        "class": CLASS_NAMES[labels[i]],
                        "step": k,
                        "state": float(states[i, k, unit]),
                    }
                )
        for label in np.unique(labels):
            mask = labels == label
            settling_rows.append(
                {
                    "variant": name,
                    "unit": unit,
                    "label": int(label),
                    "class": CLASS_NAMES[label],
                    "mean_state_at_max_steps": float(
                        states[mask, -1, unit].mean()
                    ),
                    "mean_settling_step": float(settled[mask].mean()),
                }
            )

    write_csv(output / "results.csv", rows)
    write_csv(output / "loss_by_depth.csv", depth_rows)
    (output / "results.md").write_text(markdown_table(rows, max_steps))
    plotting.plot_loss_by_depth(
        curves,
        output / "loss_by_depth.png",
        train_steps=args.num_steps,
        title=(f"Fashion-MNIST test loss, stage trained at K={args.num_steps}"),
    )
    if panels:
        write_csv(output / "trajectories.csv", trajectory_rows)
        write_csv(output / "settling.csv", settling_rows)
        plotting.plot_class_trajectories(
            panels,
            output / "trajectories.png",
            class_names=CLASS_NAMES,
            train_steps=args.num_steps,
        )
    print((output / "results.md").read_text())
    print(f"Wrote {output}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
