"""Trains NAIS-Net and ResNet baselines under one budget; writes a table.

Every model is trained by `examples/cifar.py` with the same arguments (the
same data, epochs, recipe and seed), one after the other in this process,
each into `OUTPUT/<model>/`. The table `OUTPUT/results.md` follows the
layout of the paper's CIFAR table: training accuracy, test accuracy and
generalization gap (train minus test), plus parameters and training time.

    python examples/compare.py --models naisnet,resnet \\
        --epochs 10 --train-size 10000 --output runs/compare

Any other flag is passed to `examples/cifar.py` (see its `--help`), except
`--model`, `--output` and `--export`. `--collect DIR [DIR ...]` trains
nothing: it writes the table from the `results.json` of earlier runs of
`examples/cifar.py` (for budgets split into one run per model); when a
model appears in several of them (one run per `--seed`), a second table
gives the mean and standard deviation of each model's accuracies.
"""

import argparse
import json
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import cifar  # noqa: E402
import keras  # noqa: E402

from keras_naisnet import models  # noqa: E402

DEFAULT_MODELS = "naisnet,naisnet-unconstrained,resnet"


def markdown_table(results):
    """Formats a list of `results.json` dicts as a markdown table.

    Args:
        results: dicts with `model`, `train_accuracy`, `test_accuracy`,
            `generalization_gap`, `params`, `wall_time_s`, `num_steps`
            and `blocks_per_stage`.

    Returns:
        The table as a string (accuracies in percent).

    Example:

    >>> print(markdown_table([dict(model="resnet", train_accuracy=0.9,
    ...     test_accuracy=0.8, generalization_gap=0.1, params=10,
    ...     wall_time_s=1.0, num_steps=None, blocks_per_stage=3)]))
    ... # doctest: +NORMALIZE_WHITESPACE
    | model | blocks x steps | params | train acc | test acc | gap | time |
    | --- | --- | --- | --- | --- | --- | --- |
    | resnet | 3 x - | 10 | 90.00% | 80.00% | 10.00 | 1 s |
    """
    lines = [
        "| model | blocks x steps | params | train acc | test acc | gap "
        "| time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        steps = r.get("num_steps") or "-"
        lines.append(
            f"| {r['model']} | {r['blocks_per_stage']} x {steps} "
            f"| {r['params']:,} "
            f"| {100 * r['train_accuracy']:.2f}% "
            f"| {100 * r['test_accuracy']:.2f}% "
            f"| {100 * r['generalization_gap']:.2f} "
            f"| {r['wall_time_s']:.0f} s |"
        )
    return "\n".join(lines)


def seed_table(results):
    """Mean and spread over the runs of each model that ran more than once.

    Runs are grouped by model name (typically one run per `--seed`); the
    spread is the sample standard deviation (n - 1 in the denominator).

    Args:
        results: `results.json` dicts as for `markdown_table`, with `seed`.

    Returns:
        A markdown table, or `None` when no model ran more than once.

    Example:

    >>> runs = [dict(model="resnet", seed=s, train_accuracy=a,
    ...     test_accuracy=a - 0.1, generalization_gap=0.1)
    ...     for s, a in ((0, 0.8), (1, 0.9))]
    >>> print(seed_table(runs))  # doctest: +NORMALIZE_WHITESPACE
    | model | seeds | train acc | test acc | gap |
    | --- | --- | --- | --- | --- |
    | resnet | 0, 1 | 85.00 +- 7.07% | 75.00 +- 7.07% | 10.00 +- 0.00 |
    """
    groups = {}
    for r in results:
        groups.setdefault(r["model"], []).append(r)
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return None

    def stat(runs, key, unit):
        values = [100 * r[key] for r in runs]
        return (
            f"{statistics.mean(values):.2f} +- "
            f"{statistics.stdev(values):.2f}{unit}"
        )

    lines = [
        "| model | seeds | train acc | test acc | gap |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, runs in groups.items():
        seeds = ", ".join(str(r.get("seed")) for r in runs)
        lines.append(
            f"| {name} | {seeds} | {stat(runs, 'train_accuracy', '%')} "
            f"| {stat(runs, 'test_accuracy', '%')} "
            f"| {stat(runs, 'generalization_gap', '')} |"
        )
    return "\n".join(lines)


def main(argv=None):
    """Runs the comparison; returns the list of results dicts."""
    parser = argparse.ArgumentParser(
        description=(
            "Train several models with examples/cifar.py under the same "
            "budget and write a markdown table. Other flags go to "
            "examples/cifar.py."
        )
    )
    parser.add_argument(
        "--models",
        default=DEFAULT_MODELS,
        help=f"comma-separated names from {', '.join(models.MODELS)}",
    )
    parser.add_argument("--output", default="runs/compare")
    parser.add_argument(
        "--collect",
        nargs="+",
        default=None,
        metavar="DIR",
        help="only tabulate the results.json files in these run folders",
    )
    args, rest = parser.parse_known_args(argv)
    output = pathlib.Path(args.output)
    if args.collect:
        if rest:
            raise ValueError(
                "`--collect` trains nothing and takes no training flags. "
                f"Received: {rest}"
            )
        results = [
            json.loads((pathlib.Path(d) / "results.json").read_text())
            for d in args.collect
        ]
        return _write(results, output)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in models.MODELS]
    if unknown or not names:
        raise ValueError(
            f"`--models` must name models from {tuple(models.MODELS)}. "
            f"Received: models={args.models!r}"
        )
    for flag in ("--model", "--export"):
        if any(item == flag or item.startswith(flag + "=") for item in rest):
            raise ValueError(
                f"compare.py sets {flag} itself. Received: {flag} in {rest}"
            )
    results = []
    for name in names:
        keras.utils.clear_session()
        results.append(
            cifar.main(rest + ["--model", name, "--output", str(output / name)])
        )
    return _write(results, output)


def _write(results, output):
    output.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results)
    first = results[0]
    budget = (
        f"{first['dataset']}, {first['epochs']} epochs on "
        f"{first['train_split']}, tested on {first['test_split']}, "
        f"batch {first['batch_size']}, backend {first['backend']}; "
        "train accuracy on the un-augmented training images after training."
    )
    seeds = seed_table(results)
    if seeds:
        table += (
            "\n\nMean +- sample standard deviation over the runs of each "
            f"model:\n\n{seeds}"
        )
    (output / "results.md").write_text(f"{budget}\n\n{table}\n")
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(budget)
    print(table)
    return results


if __name__ == "__main__":
    main()
