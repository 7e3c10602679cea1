"""Input pipelines for the image-classification examples (TFDS + tf.data).

`load_image_classification` reads a TensorFlow Datasets image dataset
(CIFAR-10, CIFAR-100, Fashion-MNIST, ...) and returns a batched
`tf.data.Dataset` of `(images, labels)`: float32 images scaled to `[0, 1]`
and int32 labels. It caches the decoded images, maps the augmentation in
parallel and prefetches, so that the input pipeline stays off the critical
path of a small CPU. `tf.data` pipelines feed `Model.fit` on every Keras
backend.

The data directory defaults to the `TFDS_DATA_DIR` environment variable and
then to the TFDS default (`~/tensorflow_datasets`), where TFDS downloads
the dataset on first use.
"""

import os

# Keep TensorFlow's start-up quiet before it is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _tf():
    import tensorflow as tf

    return tf


def resolve_data_dir(data_dir=None):
    """Returns `data_dir`, else `$TFDS_DATA_DIR`, else `None` (TFDS default).

    Args:
        data_dir: optional path.

    Returns:
        A path string or `None`.

    Example:

    >>> resolve_data_dir("/tmp/tfds")
    '/tmp/tfds'
    """
    return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def dataset_info(dataset, data_dir=None):
    """Returns the image shape and the number of classes of a dataset.

    Reads the prepared metadata only (or downloads the dataset where it is
    missing and the machine is connected).

    Args:
        dataset: TFDS name, e.g. `"cifar10"`.
        data_dir: optional TFDS directory (see `resolve_data_dir`).

    Returns:
        A dict with `image_shape` (tuple), `num_classes` (int) and
        `splits` (dict of split name to number of examples).

    Example:

    >>> dataset_info("cifar10")["num_classes"]  # doctest: +SKIP
    10
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(dataset, data_dir=resolve_data_dir(data_dir))
    if not builder.is_prepared():
        builder.download_and_prepare()
    info = builder.info
    return {
        "image_shape": tuple(info.features["image"].shape),
        "num_classes": info.features["label"].num_classes,
        "splits": {name: s.num_examples for name, s in info.splits.items()},
    }


def augment_image(image, seed, crop_padding=4, flip=True):
    """Random crop after zero padding, and a random horizontal flip.

    The standard CIFAR augmentation: pad by `crop_padding` pixels on each
    side, crop back to the original size at a random offset, flip left to
    right with probability 1/2. The random ops are stateless: the same
    `seed` gives the same augmentation, whichever thread of a parallel
    `map` runs it.

    Args:
        image: float tensor `(height, width, channels)`.
        seed: integer tensor of shape `(2,)`, the seed of this image's
            augmentation.
        crop_padding: non-negative integer; 0 disables the crop.
        flip: whether to flip at random.

    Returns:
        The augmented image, same shape and dtype.

    Example:

    >>> import numpy as np
    >>> augment_image(np.zeros((32, 32, 3), "float32"), seed=[0, 1]).shape
    TensorShape([32, 32, 3])
    """
    tf = _tf()
    image = tf.convert_to_tensor(image)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    # Two independent seeds, one per random op, derived from `seed`.
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=2)
    )
    if crop_padding:
        shape = tf.shape(image)
        pad = [crop_padding, crop_padding]
        padded = tf.pad(image, [pad, pad, [0, 0]])
        image = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image


def load_image_classification(
    dataset,
    split,
    batch_size,
    data_dir=None,
    take=None,
    augment=False,
    shuffle=None,
    seed=None,
    crop_padding=4,
    flip=True,
    cache=True,
    drop_remainder=False,
    repeat=False,
):
    """Builds a batched `tf.data` pipeline of an image-classification split.

    Order of operations: read (`split`, first `take` examples), scale to
    float32 in `[0, 1]`, cache, shuffle (whole split, reshuffled each
    epoch), augment (parallel map), batch, prefetch.

    Args:
        dataset: TFDS name with `image` and `label` features, e.g.
            `"cifar10"`, `"cifar100"`, `"fashion_mnist"`.
        split: TFDS split string, e.g. `"train"`, `"test"`,
            `"train[:512]"`.
        batch_size: positive integer.
        data_dir: TFDS directory; defaults to `$TFDS_DATA_DIR`, then the
            TFDS default (downloaded on first use).
        take: optional positive integer: keep only the first `take`
            examples of `split` (for short runs).
        augment: random crop with padding and horizontal flip (see
            `augment_image`); use it for training only.
        shuffle: whether to shuffle; defaults to `augment`.
        seed: optional integer seed of the shuffle and the augmentation;
            with a seed the pipeline yields the same batches on every run.
        crop_padding: padding of the random crop when augmenting.
        flip: whether augmentation flips images.
        cache: keep the decoded, scaled images in memory after the first
            pass.
        drop_remainder: drop the last incomplete batch (useful when a
            distribution strategy needs equal batches).
        repeat: repeat indefinitely (then pass `steps_per_epoch` to `fit`).

    Returns:
        A `tf.data.Dataset` of `(images, labels)` with images
        `(batch, height, width, channels)` float32 and labels `(batch,)`
        int32.

    Raises:
        ValueError: for a non-positive `batch_size` or `take`.

    Example:

    >>> ds = load_image_classification(
    ...     "cifar10", "test[:64]", batch_size=32)  # doctest: +SKIP
    >>> images, labels = next(iter(ds))  # doctest: +SKIP
    >>> images.shape  # doctest: +SKIP
    TensorShape([32, 32, 32, 3])
    """
    tf = _tf()
    import tensorflow_datasets as tfds

    if isinstance(batch_size, bool) or int(batch_size) != batch_size:
        raise ValueError(
            "`batch_size` must be a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
    if batch_size < 1:
        raise ValueError(
            "`batch_size` must be a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
    if take is not None and (int(take) != take or take < 1):
        raise ValueError(
            "`take` must be None or a positive integer. "
            f"Received: take={take!r}"
        )
    if shuffle is None:
        shuffle = bool(augment)
    if take is not None and "[" not in split:
        # Slicing the split lets TFDS read only the files it needs.
        split = f"{split}[:{int(take)}]"
        take = None
    ds = tfds.load(
        dataset,
        split=split,
        data_dir=resolve_data_dir(data_dir),
        as_supervised=True,
        shuffle_files=False,
    )
    if take is not None:
        ds = ds.take(int(take))

    def scale(image, label):
        return tf.cast(image, tf.float32) / 255.0, tf.cast(label, tf.int32)

    ds = ds.map(scale, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if repeat:
        ds = ds.repeat()
    if shuffle:
        # A buffer as large as CIFAR's training split gives a full shuffle.
        ds = ds.shuffle(50_000, seed=seed, reshuffle_each_iteration=True)
    if augment:
        # One seed pair per example from a seeded random stream, drawn anew
        # each epoch: with `seed` set, a run augments the same way every
        # time (stateful random ops in a parallel map would not).
        seeds = tf.data.Dataset.random(
            seed=seed, rerandomize_each_iteration=True
        ).batch(2, drop_remainder=True)

        def augment_pair(example, pair):
            image, label = example
            return augment_image(image, pair, crop_padding, flip), label

        ds = tf.data.Dataset.zip(ds, seeds)
        ds = ds.map(augment_pair, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
