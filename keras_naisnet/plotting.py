"""Figures for NAIS-Net experiments, drawn with matplotlib.

matplotlib is an optional dependency (`pip install keras_naisnet[plots]`);
it is imported inside each function, so the rest of the library works
without it. Every function writes a PNG and returns its path.
"""


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "Plotting needs matplotlib: pip install 'keras_naisnet[plots]'"
        ) from error
    # A file backend: the examples run on servers without a display.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(history, path, title=None):
    """Plots training and test accuracy per epoch.

    Args:
        history: a `keras.callbacks.History`, its `history` dict, or the
            path of a CSV written by `keras.callbacks.CSVLogger`; it must
            hold `accuracy` and may hold `val_accuracy` (the test set).
        path: where to write the PNG.
        title: optional figure title.

    Returns:
        `path` as a string.

    Example:

    >>> plot_learning_curves(
    ...     {"accuracy": [0.3, 0.5], "val_accuracy": [0.3, 0.4]},
    ...     "/tmp/curves.png")
    '/tmp/curves.png'
    """
    if hasattr(history, "history"):
        history = history.history
    if not isinstance(history, dict):
        import csv

        with open(history, newline="") as handle:
            rows = list(csv.DictReader(handle))
        history = {
            key: [float(row[key]) for row in rows]
            for key in (rows[0] if rows else {})
        }
    if "accuracy" not in history:
        raise ValueError(
            "`history` must hold an 'accuracy' column. Received columns: "
            f"{sorted(history)}"
        )
    plt = _pyplot()
    epochs = range(1, len(history["accuracy"]) + 1)
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(epochs, history["accuracy"], marker="o", label="train")
    if "val_accuracy" in history:
        axis.plot(epochs, history["val_accuracy"], marker="s", label="test")
    axis.set_xlabel("epoch")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_ylabel("accuracy")
    axis.grid(alpha=0.3)
    axis.legend()
    if title:
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(str(path), dpi=120)
    plt.close(figure)
    return str(path)


def plot_loss_by_depth(curves, path, train_steps=None, title=None):
    """Plots test loss against the number of unroll steps, one line each.

    Variants whose name contains `"BN"` are dashed; a vertical line marks
    the training depth. The loss axis is logarithmic.

    Args:
        curves: dict of variant name -> `(num_steps, losses)`, two
            sequences of equal length.
        path: where to write the PNG.
        train_steps: optional training depth K to mark.
        title: optional figure title.

    Returns:
        `path` as a string.

    Example:

    >>> plot_loss_by_depth(
    ...     {"NAIS-Net": ([1, 2, 3], [2.0, 1.0, 0.9])}, "/tmp/depth.png",
    ...     train_steps=2)
    '/tmp/depth.png'
    """
    if not curves:
        raise ValueError("`curves` must hold at least one variant.")
    plt = _pyplot()
    colours = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for i, (name, (steps, losses)) in enumerate(curves.items()):
        axis.plot(
            steps,
            losses,
            linestyle="--" if "BN" in name else "-",
            linewidth=2.2 if name == "NAIS-Net" else 1.4,
            color=colours(i),
            label=name,
        )
    if train_steps is not None:
        axis.axvline(train_steps, color="grey", linestyle=":", linewidth=1)
    axis.set_yscale("log")
    axis.set_xlabel("unroll steps at evaluation")
    axis.set_ylabel("test loss (cross-entropy)")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7, ncol=2)
    if title:
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(str(path), dpi=110)
    plt.close(figure)
    return str(path)


def plot_class_trajectories(panels, path, class_names=None, train_steps=None):
    """Plots one state unit over the unroll steps, coloured by class.

    Args:
        panels: list of `(title, unit, values, labels)`: `values` of shape
            `(images, steps + 1)` (the unit from `x(0)` on) and integer
            `labels` of shape `(images,)`. One subplot per panel.
        path: where to write the PNG.
        class_names: optional names indexed by label, for the legend.
        train_steps: optional training depth K to mark.

    Returns:
        `path` as a string.

    Example:

    >>> import numpy as np
    >>> plot_class_trajectories(
    ...     [("NAIS-Net", 0, np.zeros((2, 4)), np.array([0, 1]))],
    ...     "/tmp/trajectories.png")
    '/tmp/trajectories.png'
    """
    if not panels:
        raise ValueError("`panels` must hold at least one panel.")
    plt = _pyplot()
    colours = plt.get_cmap("tab10")
    figure, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False
    )
    for axis, (title, unit, values, labels) in zip(axes[0], panels):
        seen = set()
        for row, label in zip(values, labels):
            label = int(label)
            name = class_names[label] if class_names else str(label)
            axis.plot(
                range(len(row)),
                row,
                color=colours(label % 10),
                linewidth=0.9,
                alpha=0.8,
                label=None if label in seen else name,
            )
            seen.add(label)
        if train_steps is not None:
            axis.axvline(train_steps, color="grey", linestyle=":")
        axis.set_title(f"{title}, unit {unit}", fontsize=9)
        axis.set_xlabel("unroll step")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("state of the unit")
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5))
    figure.tight_layout()
    figure.savefig(str(path), dpi=100)
    plt.close(figure)
    return str(path)


def plot_depth_histograms(depths, labels, path, class_names=None, title=None):
    """Plots a histogram of processing depth for each class.

    Args:
        depths: integer array `(images,)`, the unroll steps each image took
            (for a model, the sum over its blocks).
        labels: integer class labels, shape `(images,)`.
        path: where to write the PNG.
        class_names: optional names indexed by label.
        title: optional figure title.

    Returns:
        `path` as a string.

    Example:

    >>> import numpy as np
    >>> plot_depth_histograms(
    ...     np.array([3, 4, 4, 9]), np.array([0, 0, 1, 1]), "/tmp/h.png")
    '/tmp/h.png'
    """
    import numpy as np

    depths = np.asarray(depths)
    labels = np.asarray(labels)
    if depths.shape != labels.shape or depths.size == 0:
        raise ValueError(
            "`depths` and `labels` must be non-empty and of equal shape. "
            f"Received: depths.shape={depths.shape}, "
            f"labels.shape={labels.shape}"
        )
    plt = _pyplot()
    classes = np.unique(labels)
    columns = min(5, len(classes))
    rows = -(-len(classes) // columns)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(2.6 * columns, 2.1 * rows),
        sharex=True,
        squeeze=False,
    )
    low, high = int(depths.min()), int(depths.max())
    bins = np.arange(low, high + 2) - 0.5
    if len(bins) > 41:
        bins = np.linspace(low - 0.5, high + 0.5, 41)
    for axis, label in zip(axes.flat, classes):
        values = depths[labels == label]
        axis.hist(values, bins=bins, color="tab:blue")
        axis.axvline(values.mean(), color="tab:red", linewidth=1)
        name = class_names[label] if class_names else str(label)
        axis.set_title(f"{name}: mean {values.mean():.1f}", fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(classes) :]:
        axis.axis("off")
    for axis in axes[-1]:
        axis.set_xlabel("processing depth (steps)", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(str(path), dpi=90)
    plt.close(figure)
    return str(path)


def plot_images_by_depth(
    images,
    depths,
    path,
    labels=None,
    class_names=None,
    rows=5,
    columns=10,
    title=None,
):
    """Shows test images in order of the depth they needed.

    `rows * columns` images are taken at evenly spaced ranks of the depth
    order, from the shallowest (top left) to the deepest (bottom right),
    each titled with its depth (and class).

    Args:
        images: array `(images, height, width, channels)`, values in
            `[0, 1]` or `[0, 255]`.
        depths: integer array `(images,)`.
        path: where to write the PNG.
        labels: optional integer labels, shape `(images,)`.
        class_names: optional names indexed by label.
        rows, columns: grid size.
        title: optional figure title.

    Returns:
        `path` as a string.

    Example:

    >>> import numpy as np
    >>> plot_images_by_depth(
    ...     np.zeros((4, 8, 8, 3)), np.array([1, 2, 3, 4]), "/tmp/g.png",
    ...     rows=1, columns=4)
    '/tmp/g.png'
    """
    import numpy as np

    images = np.asarray(images, dtype=np.float64)
    depths = np.asarray(depths)
    if len(images) != len(depths) or len(images) == 0:
        raise ValueError(
            "`images` and `depths` must be non-empty and of equal length. "
            f"Received: {len(images)} images, {len(depths)} depths"
        )
    if images.max() > 1.0:
        images = images / 255.0
    # A stable sort keeps the dataset order among equal depths.
    order = np.argsort(depths, kind="stable")
    count = min(rows * columns, len(order))
    picks = order[np.linspace(0, len(order) - 1, count).round().astype(int)]
    plt = _pyplot()
    figure, axes = plt.subplots(
        rows, columns, figsize=(0.9 * columns, 1.05 * rows), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, picks):
        axis.imshow(
            np.clip(images[index], 0.0, 1.0).squeeze(),
            interpolation="nearest",
        )
        text = str(int(depths[index]))
        if labels is not None:
            label = int(labels[index])
            text += " " + (class_names[label] if class_names else str(label))
        axis.set_title(text, fontsize=6)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(str(path), dpi=80)
    plt.close(figure)
    return str(path)


def plot_accuracy_by_depth(curves, path, train_steps=None, adaptive=None):
    """Plots test accuracy against the number of unroll steps per block.

    Args:
        curves: dict of model name -> `(num_steps, accuracies)`.
        path: where to write the PNG.
        train_steps: optional training depth to mark.
        adaptive: optional dict of model name -> `(mean_steps, accuracy)`
            for adaptive depth, drawn as one marker each.

    Returns:
        `path` as a string.

    Example:

    >>> plot_accuracy_by_depth(
    ...     {"NAIS-Net": ([1, 3, 9], [0.3, 0.5, 0.5])}, "/tmp/a.png",
    ...     train_steps=3)
    '/tmp/a.png'
    """
    if not curves:
        raise ValueError("`curves` must hold at least one model.")
    plt = _pyplot()
    colours = plt.get_cmap("tab10")
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for i, (name, (steps, accuracies)) in enumerate(curves.items()):
        axis.plot(steps, accuracies, marker="o", color=colours(i), label=name)
        if adaptive and name in adaptive:
            mean_steps, accuracy = adaptive[name]
            axis.plot(
                [mean_steps],
                [accuracy],
                marker="*",
                markersize=12,
                linestyle="none",
                color=colours(i),
                label=f"{name}, adaptive (mean steps)",
            )
    if train_steps is not None:
        axis.axvline(
            train_steps,
            color="grey",
            linestyle=":",
            linewidth=1,
            label="training depth",
        )
    axis.set_xscale("log")
    # From zero, so that small differences are not blown up.
    axis.set_ylim(bottom=0.0)
    axis.set_xlabel("unroll steps per block at test time")
    axis.set_ylabel("test accuracy")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(str(path), dpi=100)
    plt.close(figure)
    return str(path)
