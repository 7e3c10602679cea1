"""Pattern-dependent depth of a trained NAIS-Net on CIFAR test images.

Reads models written by `examples/cifar.py` (`MODEL_DIR/model.keras` and
`MODEL_DIR/results.json`) and measures what the stability of NAIS-Net
promises:

    python examples/cifar.py --model naisnet --output runs/naisnet
    python examples/cifar.py --model naisnet-unconstrained \\
        --output runs/naisnet-unconstrained
    python examples/depth.py --model-dir runs/naisnet \\
        runs/naisnet-unconstrained --output runs/depth

The first `--model-dir` is studied in detail: every NAIS block is unrolled
adaptively (each image until the root mean square of its step change is
at most `--tol`, or `--max-steps`), and the processing depth of an image
is the sum of the steps its blocks took. Every model directory is also
evaluated with all its blocks unrolled to a fixed number of steps, from 1
to several times the training depth.

Outputs in `--output`:
- `depth_histograms.png`: processing depth per class;
- `images_by_depth.png`: test images at evenly spaced ranks of depth,
  shallowest first;
- `trajectories.png`: a few channels of one block's state (mean over
  pixels, then over the images of each class) over the unroll steps;
- `accuracy_by_depth.png`: test accuracy against the unroll steps per
  block, one line per model, with the adaptive result as a star;
- `summary.md`: the tables below, and the stability check of each model;
- `depth_per_image.csv`, `depth_per_class.csv`, `accuracy_by_depth.csv`
  and `summary.json`: the numbers.
"""

import argparse
import csv
import json
import logging
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_naisnet import data  # noqa: E402
from keras_naisnet import plotting  # noqa: E402
from keras_naisnet import stability  # noqa: E402

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer. Received: {text}"
        )
    return value


def _non_negative_float(text):
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(
            f"must be a non-negative number. Received: {text}"
        )
    return value


def _steps_list(text):
    try:
        values = sorted({int(part) for part in text.split(",") if part})
    except ValueError:
        values = []
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(
            "must be a comma-separated list of positive integers. "
            f"Received: {text}"
        )
    return values


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model-dir",
        nargs="+",
        required=True,
        help="folders written by examples/cifar.py; the first one is "
        "studied in detail, all are swept over the unroll depth",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="TFDS data directory (default: $TFDS_DATA_DIR, then the TFDS "
        "default, where the data is downloaded on first use)",
    )
    parser.add_argument(
        "--test-size",
        type=_positive_int,
        default=1000,
        help="use the first N test images",
    )
    parser.add_argument(
        "--tol",
        type=_non_negative_float,
        default=1e-3,
        help="adaptive depth: a block stops for an image once the root "
        "mean square of its step change is at most this",
    )
    parser.add_argument(
        "--max-steps",
        type=_positive_int,
        default=None,
        help="adaptive depth: most steps per block (default: 10 times the "
        "training depth)",
    )
    parser.add_argument(
        "--unroll-steps",
        type=_steps_list,
        default=None,
        help="comma-separated fixed depths per block for the accuracy "
        "sweep (default: 1, 2, K/2, K, 2K, 3K, 5K, 10K for training "
        "depth K)",
    )
    parser.add_argument(
        "--trajectory-block",
        default=None,
        help="name of the block whose state trajectories are drawn "
        "(default: the last NAIS block)",
    )
    parser.add_argument(
        "--trajectory-units",
        type=_positive_int,
        default=4,
        help="number of state channels drawn",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=100)
    parser.add_argument("--output", default="runs/depth")
    return parser


# ---------------------------------------------------------------------------
# Loading.


def load_run(model_dir):
    """Returns `(name, model, results)` of one `examples/cifar.py` folder."""
    folder = pathlib.Path(model_dir)
    path = folder / "model.keras"
    if not path.is_file():
        raise ValueError(
            "Each --model-dir must hold a model.keras written by "
            f"examples/cifar.py. Received: --model-dir {model_dir}"
        )
    results = {}
    if (folder / "results.json").is_file():
        results = json.loads((folder / "results.json").read_text())
    model = keras.models.load_model(path)
    name = results.get("model") or folder.name
    return name, model, results


def run_labels(model_dirs, names):
    """Labels of the runs in the tables: model names, or folder names.

    Several runs of one architecture (another activation or seed) would
    share a model name, so then every run is labelled by its folder.

    Example:

    >>> run_labels(["runs/a/naisnet", "runs/b/resnet"], ["naisnet", "resnet"])
    ['naisnet', 'resnet']
    >>> run_labels(["runs/naisnet", "runs/naisnet-relu"], ["naisnet"] * 2)
    ['naisnet', 'naisnet-relu']
    """
    if len(set(names)) == len(names):
        return list(names)
    return [pathlib.Path(folder).name for folder in model_dirs]


def training_depth(model, results):
    """The unroll depth the model was trained with (0: no NAIS block)."""
    blocks = stability.nais_blocks(model)
    if not blocks:
        return 0
    return int(results.get("num_steps") or max(b.num_steps for b in blocks))


def load_test_images(dataset, test_size, data_dir, batch_size):
    """The first `test_size` test images (float32 in [0, 1]) and labels."""
    pipeline = data.load_image_classification(
        dataset,
        f"test[:{test_size}]",
        batch_size,
        data_dir=data_dir,
        shuffle=False,
    )
    images, labels = [], []
    for x, y in pipeline.as_numpy_iterator():
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


# ---------------------------------------------------------------------------
# Measurements.


def accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def adaptive_depth(model, images, tol, max_steps, batch_size):
    """Logits and the steps `(images, blocks)` of adaptive inference."""
    probe = stability.with_unroll(
        model, tol=tol, max_steps=max_steps, return_steps=True
    )
    logits, steps = probe.predict(images, batch_size=batch_size, verbose=0)
    return logits, steps.astype(np.int64), probe.step_block_names


def accuracy_sweep(model, images, labels, depths, batch_size):
    """Test accuracy with every block unrolled to each fixed depth."""
    rows = []
    for num_steps in depths:
        clone = stability.with_unroll(model, num_steps=num_steps)
        logits = clone.predict(images, batch_size=batch_size, verbose=0)
        rows.append((num_steps, accuracy(logits, labels)))
    return rows


def _block_call_arguments(model, block):
    """The symbolic input and initial state of a block's first call."""
    # Keras keeps the call arguments of a functional graph on the node;
    # there is no public accessor for a keyword argument.
    node = block._inbound_nodes[0]
    inputs = node.arguments.args[0]
    initial_state = node.arguments.kwargs.get("initial_state")
    return inputs, initial_state


def block_inputs(model, block, images, batch_size):
    """The input `u` and start state `x(0)` (or None) a block receives.

    The blocks before it run as in `model` (its training depth).
    """
    inputs, initial_state = _block_call_arguments(model, block)
    outputs = [inputs] + ([initial_state] if initial_state is not None else [])
    feature = keras.Model(model.inputs, outputs)
    values = feature.predict(images, batch_size=batch_size, verbose=0)
    if not isinstance(values, (list, tuple)):
        values = [values]
    return values[0], (values[1] if len(values) > 1 else None)


def channel_trajectories(model, block, images, num_steps, batch_size):
    """Per image, the pixel mean of every channel of x(0..num_steps).

    Returns an array `(images, num_steps + 1, channels)` (dense blocks:
    the units themselves). The blocks before `block` run at their
    training depth.
    """
    u, x0 = block_inputs(model, block, images, batch_size)
    chunks = []
    for start in range(0, len(images), batch_size):
        part = slice(start, start + batch_size)
        states = stability.trajectory(
            block,
            u[part],
            num_steps=num_steps,
            initial_state=None if x0 is None else x0[part],
        )
        # Mean over pixels: what global average pooling passes on.
        axes = tuple(range(2, states.ndim - 1))
        chunks.append(states.mean(axis=axes) if axes else states)
    return np.concatenate(chunks)


def block_diagnostics(model, images, num_steps, batch_size):
    """Stability numbers of a model's NAIS blocks.

    Returns a dict with the Lipschitz bound of every block and the
    spectral radius of the last block's step Jacobian at the state it
    reaches after `num_steps` steps on the given images (power iteration,
    300 steps at most).
    """
    blocks = stability.nais_blocks(model)
    last = blocks[-1]
    u, x0 = block_inputs(model, last, images, batch_size)
    states = stability.trajectory(
        last, u, num_steps=num_steps, initial_state=x0
    )[:, -1]
    radius = stability.step_jacobian_spectral_radius(
        last, u, states, method="power", num_iterations=300
    )
    bounds = {}
    for b in blocks:
        block_input, start = _block_call_arguments(model, b)
        if start is None or start is block_input:
            bounds[b.name] = stability.lipschitz_bound(
                b, input_start=None if start is None else True
            )
        else:
            # A start state other than the input: the bound's argument
            # does not cover it.
            bounds[b.name] = float("nan")
    return {
        "lipschitz_bounds": bounds,
        "last_block": last.name,
        "last_block_spectral_radius_max": float(np.max(radius)),
    }


def discriminative_channels(trajectories, labels, count):
    """Channels whose final class means differ most (variance)."""
    final = trajectories[:, -1]
    means = np.stack([final[labels == c].mean(0) for c in np.unique(labels)])
    return np.argsort(means.var(axis=0))[::-1][:count]


# ---------------------------------------------------------------------------
# Reports.


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _markdown_table(header, rows):
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    """Runs the depth study; returns the summary dict."""
    args = build_parser().parse_args(argv)
    # Every depth is a new model with its own predict function; TensorFlow
    # warns about the retracing, which is expected here.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    runs = [load_run(folder) for folder in args.model_dir]
    labels = run_labels(args.model_dir, [run[0] for run in runs])
    runs = [(label, *run[1:]) for label, run in zip(labels, runs)]
    name, model, results = runs[0]
    train_steps = training_depth(model, results)
    if train_steps == 0:
        raise ValueError(
            "The first --model-dir must hold a model with NAIS blocks. "
            f"Received: --model-dir {args.model_dir[0]} ({name})"
        )
    max_steps = args.max_steps or 10 * train_steps
    depths = args.unroll_steps or sorted(
        {
            d
            for d in (
                1,
                2,
                train_steps // 2,
                train_steps,
                2 * train_steps,
                3 * train_steps,
                5 * train_steps,
                10 * train_steps,
            )
            if d >= 1
        }
    )
    dataset = results.get("dataset", "cifar10")
    images, labels = load_test_images(
        dataset, args.test_size, args.data_dir, args.batch_size
    )
    class_names = CIFAR10_CLASSES if dataset == "cifar10" else None

    # Adaptive depth of the first model.
    logits, steps, block_names = adaptive_depth(
        model, images, args.tol, max_steps, args.batch_size
    )
    depth = steps.sum(axis=1)
    predicted = np.argmax(logits, axis=-1)
    _write_csv(
        output / "depth_per_image.csv",
        ["index", "label", "predicted", "correct", "depth"]
        + [f"steps_{b}" for b in block_names],
        [
            [i, labels[i], predicted[i], int(predicted[i] == labels[i])]
            + [depth[i]]
            + steps[i].tolist()
            for i in range(len(labels))
        ],
    )
    per_class = []
    for c in np.unique(labels):
        mask = labels == c
        per_class.append(
            [
                class_names[c] if class_names else int(c),
                int(mask.sum()),
                round(float(depth[mask].mean()), 2),
                round(float(depth[mask].std()), 2),
                int(np.median(depth[mask])),
                round(accuracy(logits[mask], labels[mask]), 4),
            ]
        )
    class_header = [
        "class",
        "images",
        "mean depth",
        "std",
        "median",
        "accuracy (adaptive)",
    ]
    _write_csv(output / "depth_per_class.csv", class_header, per_class)
    plotting.plot_depth_histograms(
        depth,
        labels,
        output / "depth_histograms.png",
        class_names=class_names,
        title=f"{name}: steps summed over {len(block_names)} blocks, "
        f"tol={args.tol:g}, max {max_steps} per block",
    )
    plotting.plot_images_by_depth(
        images,
        depth,
        output / "images_by_depth.png",
        labels=labels,
        class_names=class_names,
        title=f"{name}: test images from shallowest to deepest",
    )

    # State trajectories of one block, per class.
    blocks = {b.name: b for b in stability.nais_blocks(model)}
    block_name = args.trajectory_block or block_names[-1]
    if block_name not in blocks:
        raise ValueError(
            f"--trajectory-block must name a NAIS block of {name}: "
            f"{sorted(blocks)}. Received: --trajectory-block {block_name}"
        )
    trajectories = channel_trajectories(
        model, blocks[block_name], images, max_steps, args.batch_size
    )
    channels = discriminative_channels(
        trajectories, labels, args.trajectory_units
    )
    classes = np.unique(labels)
    panels = []
    for channel in channels:
        class_means = np.stack(
            [trajectories[labels == c][:, :, channel].mean(0) for c in classes]
        )
        panels.append(
            (f"{block_name} (class means)", int(channel), class_means, classes)
        )
    plotting.plot_class_trajectories(
        panels,
        output / "trajectories.png",
        class_names=class_names,
        train_steps=train_steps,
    )

    # Accuracy against the unroll depth, and adaptive depth, per model.
    sweep_rows, curves, adaptive_points, models_summary = [], {}, {}, []
    for run_name, run_model, run_results in runs:
        report = stability.check(run_model)
        entry = {
            "model": run_name,
            "train_steps": training_depth(run_model, run_results),
            "test_accuracy_reported": run_results.get("test_accuracy"),
            "stability_check_passed": report.passed,
            "stability_report": report.to_markdown(),
        }
        if not stability.nais_blocks(run_model):
            out = run_model.predict(
                images, batch_size=args.batch_size, verbose=0
            )
            entry["accuracy"] = accuracy(out, labels)
            models_summary.append(entry)
            continue
        rows = accuracy_sweep(
            run_model, images, labels, depths, args.batch_size
        )
        curves[run_name] = ([d for d, _ in rows], [a for _, a in rows])
        sweep_rows += [(run_name, d, round(a, 4)) for d, a in rows]
        if run_model is model:
            run_logits, run_steps = logits, steps
        else:
            run_logits, run_steps, _ = adaptive_depth(
                run_model, images, args.tol, max_steps, args.batch_size
            )
        entry.update(
            block_diagnostics(run_model, images[:8], max_steps, args.batch_size)
        )
        mean_steps = float(run_steps.mean())
        adaptive_points[run_name] = (mean_steps, accuracy(run_logits, labels))
        entry.update(
            {
                "accuracy_by_steps": dict(rows),
                "adaptive_accuracy": accuracy(run_logits, labels),
                "adaptive_mean_steps_per_block": mean_steps,
                "adaptive_fraction_at_max_steps": float(
                    np.mean(run_steps == max_steps)
                ),
            }
        )
        models_summary.append(entry)
    _write_csv(
        output / "accuracy_by_depth.csv",
        ["model", "num_steps", "accuracy"],
        sweep_rows,
    )
    if curves:
        plotting.plot_accuracy_by_depth(
            curves,
            output / "accuracy_by_depth.png",
            train_steps=train_steps,
            adaptive=adaptive_points,
        )

    summary = {
        "model_dirs": args.model_dir,
        "dataset": dataset,
        "test_images": int(len(labels)),
        "tol": args.tol,
        "max_steps": max_steps,
        "train_steps": train_steps,
        "blocks": list(block_names),
        "mean_depth": float(depth.mean()),
        "min_depth": int(depth.min()),
        "max_depth": int(depth.max()),
        "adaptive_accuracy": accuracy(logits, labels),
        "models": models_summary,
        "backend": keras.backend.backend(),
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (output / "summary.md").write_text(
        _summary_markdown(summary, per_class, class_header, depths)
    )
    print((output / "summary.md").read_text())
    return summary


def _largest(values):
    """The largest value that is not NaN (NaN when there is none)."""
    values = [v for v in values if not np.isnan(v)]
    return max(values) if values else float("nan")


def _summary_markdown(summary, per_class, class_header, depths):
    lines = [
        f"# Depth study: {summary['models'][0]['model']}",
        "",
        f"{summary['test_images']} {summary['dataset']} test images, "
        f"backend {summary['backend']}, tol={summary['tol']:g}, "
        f"max_steps={summary['max_steps']} per block, training depth "
        f"{summary['train_steps']} steps per block, "
        f"{len(summary['blocks'])} NAIS blocks. Depth = steps summed over "
        f"the blocks (fixed depth: {len(summary['blocks'])} x "
        f"{summary['train_steps']} = "
        f"{len(summary['blocks']) * summary['train_steps']}).",
        "",
        f"Adaptive depth: mean {summary['mean_depth']:.1f}, range "
        f"{summary['min_depth']}-{summary['max_depth']}, accuracy "
        f"{summary['adaptive_accuracy']:.4f}.",
        "",
        "## Depth per class",
        "",
        _markdown_table(class_header, per_class),
        "",
        "## Accuracy against unroll steps per block",
        "",
    ]
    swept = [m for m in summary["models"] if "accuracy_by_steps" in m]
    header = (
        ["model"]
        + [str(d) for d in depths]
        + [
            "adaptive (mean steps/block)",
            "block runs at max_steps",
            "largest Lipschitz bound",
            "rho(J) last block",
        ]
    )
    rows = []
    for m in swept:
        rows.append(
            [m["model"]]
            + [f"{m['accuracy_by_steps'][d]:.4f}" for d in depths]
            + [
                f"{m['adaptive_accuracy']:.4f} "
                f"({m['adaptive_mean_steps_per_block']:.1f})",
                f"{m['adaptive_fraction_at_max_steps']:.1%}",
                f"{_largest(m['lipschitz_bounds'].values()):.3g}",
                f"{m['last_block_spectral_radius_max']:.4f}",
            ]
        )
    lines += [
        _markdown_table(header, rows),
        "",
        "Columns: test accuracy with every block unrolled to that many "
        "steps; adaptive accuracy and mean steps per block; the share of "
        "(image, block) runs that stopped at max_steps; the largest "
        "`stability.lipschitz_bound` over the blocks (inf: no bound); the "
        "largest spectral radius of the last block's step Jacobian at "
        "x(max_steps), over the first 8 test images.",
    ]
    for m in summary["models"]:
        if "accuracy" in m:
            lines += [
                "",
                f"{m['model']} (no NAIS block, not swept): accuracy "
                f"{m['accuracy']:.4f}.",
            ]
    lines += ["", "## Stability check", ""]
    for m in summary["models"]:
        lines += [f"### {m['model']}", "", m["stability_report"], ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
