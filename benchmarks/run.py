"""Side-by-side benchmarks of the NAIS blocks, printed as one table.

Run from the repository root, with the backend of your choice:

    KERAS_BACKEND=tensorflow python benchmarks/run.py
    KERAS_BACKEND=jax python benchmarks/run.py --quick

Every comparison runs in this one process: the two (or three) sides of a
comparison are timed in alternating repetitions, so that both see the
same machine load, and the table reports the median of the
per-repetition ratios together with the median time of each side. Items:

- `block`: a training step of `NaisConvBlock` against `SharedConvLoop`
  (`benchmarks/reference.py`), the same convolutions written by hand with
  shared weights and no constraint (target: at most 1.10 times), and the
  projection time as a share of the block's training step (target: at
  most 3%), timed on its own, compiled as the optimizer runs it.
- `modes`: `stability="reparametrization"` against `"projection"`.
- `jit`: `jit_compile=True` against `False` (TensorFlow only).
- `memory`: peak memory of a training step against `num_steps`, each in a
  fresh subprocess, with the slope of a least-squares line.
- `models`: training throughput of NAIS-Net10 against the matching ResNet
  on the CIFAR-10 input pipeline, and the pipeline alone.
- `depth`: adaptive depth at inference (`tol`) against a fixed
  `max_steps`, on real CIFAR-10 test images with a trained model.

On an accelerator the script runs unchanged; every throughput is printed
in images per second.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_naisnet  # noqa: E402
from keras_naisnet import NaisConvBlock  # noqa: E402
from keras_naisnet import data  # noqa: E402
from keras_naisnet import models  # noqa: E402
from keras_naisnet import stability  # noqa: E402
from keras_naisnet.constraints import project_conv_state  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402

SETTINGS = {
    "full": {
        "filters": (16, 64),
        "sizes": (32, 8),
        "steps": (1, 10, 30),
        "batch": 16,
        "reps": 5,
        "model_reps": 5,
        "min_time": 0.25,
        "memory_steps": (1, 10, 20, 30),
        "memory_shape": (64, 32, 16),
        "memory_in_process": False,
        "model_steps": 10,
        "model_batch": 128,
        "resnet_blocks": 3,
        "model_batches": 2,
        "pipeline_batches": 30,
        "train_images": 6400,
        "train_steps": 150,
        "train_batch": 64,
        "test_images": 1000,
        "tols": (1e-2, 1e-3),
    },
    "quick": {
        "filters": (16,),
        "sizes": (8,),
        "steps": (2,),
        "batch": 4,
        "reps": 3,
        "model_reps": 3,
        "min_time": 0.01,
        "memory_steps": (1, 3),
        "memory_shape": (8, 8, 4),
        # Quick runs measure in this process: the numbers mean nothing,
        # the code path is what a quick run checks.
        "memory_in_process": True,
        "model_steps": 2,
        "model_batch": 16,
        "resnet_blocks": 1,
        "model_batches": 1,
        "pipeline_batches": 3,
        "train_images": 64,
        "train_steps": 2,
        "train_batch": 16,
        "test_images": 32,
        "tols": (1e-2,),
    },
}
ITEMS = ("block", "modes", "jit", "memory", "models", "depth")


# --------------------------------------------------------------------------
# Machine description.


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def accelerator():
    """Name of the accelerator the backend computes on, or `None`."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return details.get("device_name", gpus[0].name)
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return f"{device.platform}: {device.device_kind}"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    return None


def hardware():
    """A dict describing the machine, the backend and the versions."""
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[
        backend
    ]
    backend_version = __import__(module).__version__
    info = {
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "accelerator": accelerator() or "none",
        "backend": f"{backend} {backend_version}",
        "keras": keras.__version__,
        "keras_naisnet": keras_naisnet.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    if backend == "torch":
        import torch

        info["torch_threads"] = torch.get_num_threads()
    try:
        info["load_average"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------
# Timing.


def side_by_side(runs, reps, min_time):
    """Times callables in alternating repetitions.

    Each callable runs one unit of work (one training step, one batch) and
    returns only when the work is done. Every side runs the same number of
    units per repetition, calibrated so that the slowest side takes about
    `min_time` seconds; the order of the sides alternates between
    repetitions.

    Args:
        runs: dict name -> callable.
        reps: number of repetitions.
        min_time: seconds per repetition of the slowest side.

    Returns:
        A dict name -> list of seconds per unit, one entry per repetition.
    """
    names = list(runs)
    single = {}
    for name in names:
        runs[name]()  # warm-up (tracing, compilation)
        start = time.perf_counter()
        runs[name]()
        single[name] = time.perf_counter() - start
    units = max(1, math.ceil(min_time / max(max(single.values()), 1e-6)))
    times = {name: [] for name in names}
    for rep in range(reps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            for _ in range(units):
                runs[name]()
            times[name].append((time.perf_counter() - start) / units)
    return times


def median_ratio(times, num, den):
    """Median over repetitions of `times[num][i] / times[den][i]`.

    Each repetition pairs the two sides under the same load; the table
    also prints the median time of each side, so their ratio can be read
    too (the two agree within the noise of the machine).
    """
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def med(values):
    return statistics.median(values)


def compiled(fn):
    """Compiles `fn` the way the backend's train step runs it."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn


# --------------------------------------------------------------------------
# Training steps of one block.


def _block_model(layer, filters, size, jit_compile="auto"):
    model = keras.Sequential([keras.Input((size, size, filters)), layer])
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="mse",
        jit_compile=jit_compile,
    )
    return model


def _train_step(model, x, y):
    def run():
        model.train_on_batch(x, y)

    return run


def _block_data(rng, batch, size, filters):
    x = rng.normal(size=(batch, size, size, filters)).astype("float32")
    y = rng.normal(size=(batch, size, size, filters)).astype("float32")
    return x, y


PROJECTION_REPEATS = 100


def _chained_projection(kernel, epsilon, eta):
    for _ in range(PROJECTION_REPEATS):
        kernel = project_conv_state(kernel, epsilon, eta)
    return kernel


def bench_block(cfg, rows, rng):
    """NaisConvBlock against the hand-written loop, and the projection.

    Three sides in alternation: the block's training step, the hand
    loop's, and the projection alone, compiled as the optimizer runs it,
    `PROJECTION_REPEATS` chained projections per call so that the call
    overhead does not count.
    """
    for filters in cfg["filters"]:
        for size in cfg["sizes"]:
            x, y = _block_data(rng, cfg["batch"], size, filters)
            for steps in cfg["steps"]:
                nais = _block_model(
                    NaisConvBlock(filters, num_steps=steps), filters, size
                )
                hand = _block_model(
                    reference.SharedConvLoop(filters, steps), filters, size
                )
                block = nais.layers[-1]
                project = compiled(
                    lambda w, b=block: _chained_projection(w, b.epsilon, b.eta)
                )

                def projection(block=block, project=project):
                    kernel = ops.convert_to_tensor(block._state_variable)
                    ops.convert_to_numpy(project(kernel)[0, 0, 0, 0])

                times = side_by_side(
                    {
                        "nais": _train_step(nais, x, y),
                        "hand": _train_step(hand, x, y),
                        "projection": projection,
                    },
                    cfg["reps"],
                    cfg["min_time"],
                )
                times["projection"] = [
                    t / PROJECTION_REPEATS for t in times["projection"]
                ]
                config = f"{filters} filters, {size}x{size}, K={steps}"
                rows.append(
                    {
                        "item": "train step: NaisConvBlock / hand loop",
                        "config": config,
                        "ratio": median_ratio(times, "nais", "hand"),
                        "target": "<= 1.10",
                        "a": med(times["nais"]),
                        "b": med(times["hand"]),
                        "batch": cfg["batch"],
                    }
                )
                rows.append(
                    {
                        "item": "projection / train step",
                        "config": config,
                        "ratio": median_ratio(times, "projection", "nais"),
                        "target": "<= 0.03",
                        "a": med(times["projection"]),
                        "b": med(times["nais"]),
                        "batch": None,
                    }
                )
                print(
                    f"  {config}: {rows[-2]['ratio']:.3f}x hand loop, "
                    f"projection {100 * rows[-1]['ratio']:.2f}% of a step",
                    flush=True,
                )


def bench_modes(cfg, rows, rng):
    """Reparametrization against projection, per training step."""
    filters, size = cfg["filters"][-1], cfg["sizes"][-1]
    steps = cfg["steps"][-1]
    x, y = _block_data(rng, cfg["batch"], size, filters)
    models = {
        mode: _block_model(
            NaisConvBlock(filters, num_steps=steps, stability=mode),
            filters,
            size,
        )
        for mode in ("reparametrization", "projection", None)
    }
    times = side_by_side(
        {str(k): _train_step(m, x, y) for k, m in models.items()},
        cfg["reps"],
        cfg["min_time"],
    )
    config = f"{filters} filters, {size}x{size}, K={steps}"
    for mode in ("reparametrization", "None"):
        rows.append(
            {
                "item": f"train step: stability={mode} / projection",
                "config": config,
                "ratio": median_ratio(times, mode, "projection"),
                "target": "",
                "a": med(times[mode]),
                "b": med(times["projection"]),
                "batch": cfg["batch"],
            }
        )


def bench_jit(cfg, rows, rng):
    """`jit_compile=True` against `False` on TensorFlow."""
    if keras.backend.backend() != "tensorflow":
        print("  skipped: jit_compile is a TensorFlow choice", flush=True)
        return
    for filters, size in ((cfg["filters"][0], cfg["sizes"][0]),) + (
        ((cfg["filters"][-1], cfg["sizes"][-1]),)
        if len(cfg["filters"]) > 1
        else ()
    ):
        steps = cfg["steps"][-1] if len(cfg["steps"]) < 3 else 10
        x, y = _block_data(rng, cfg["batch"], size, filters)
        runs = {}
        for jit in (True, False):
            model = _block_model(
                NaisConvBlock(filters, num_steps=steps),
                filters,
                size,
                jit_compile=jit,
            )
            runs[str(jit)] = _train_step(model, x, y)
        times = side_by_side(runs, cfg["reps"], cfg["min_time"])
        rows.append(
            {
                "item": "train step: jit_compile=True / False",
                "config": f"{filters} filters, {size}x{size}, K={steps}",
                "ratio": median_ratio(times, "True", "False"),
                "target": "",
                "a": med(times["True"]),
                "b": med(times["False"]),
                "batch": cfg["batch"],
            }
        )


# --------------------------------------------------------------------------
# Peak memory against num_steps, each point in a fresh process.


def _status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def step_memory(steps, filters, size, batch):
    """Measures the peak memory of one training step.

    On an accelerator: the backend's peak allocation statistics. On CPU:
    the process resident set (RSS) high-water mark `VmHWM`, reset through
    `/proc/self/clear_refs` after a first, tracing step, minus the RSS
    before the measured step.
    """
    rng = np.random.default_rng(0)
    x, y = _block_data(rng, batch, size, filters)
    model = _block_model(NaisConvBlock(filters, num_steps=steps), filters, size)
    model.train_on_batch(x, y)
    backend = keras.backend.backend()
    device = accelerator()
    if device is not None and backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")
        before = tf.config.experimental.get_memory_info("GPU:0")["current"]
        model.train_on_batch(x, y)
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
        method = "TensorFlow GPU allocator peak"
    elif device is not None and backend == "torch":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        model.train_on_batch(x, y)
        peak = torch.cuda.max_memory_allocated()
        method = "torch.cuda.max_memory_allocated"
    elif device is not None and backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats()
        before = stats["bytes_in_use"]
        model.train_on_batch(x, y)
        peak = jax.devices()[0].memory_stats()["peak_bytes_in_use"]
        method = "JAX device peak_bytes_in_use (includes the first step)"
    else:
        before = _status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        model.train_on_batch(x, y)
        peak = _status_bytes("VmHWM")
        method = "process RSS high-water mark (VmHWM), reset before the step"
    return {"peak": peak - before, "method": method}


def bench_memory(cfg, rows, rng):
    """Runs `step_memory` per `num_steps` and fits a line.

    Each point runs in a fresh subprocess (except with `--quick`).
    """
    filters, size, batch = cfg["memory_shape"]
    env = dict(os.environ)
    # A fixed mmap threshold makes glibc return freed tensors to the OS, so
    # that the RSS follows what the step allocates.
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    # With oneDNN on (TensorFlow's default on CPUs with AVX-512), TensorFlow
    # keeps freed CPU tensors in its own pool, so the second step reuses the
    # first step's pages and the RSS does not grow; the plain allocator frees
    # them. Only the kernels change, not which tensors a step keeps.
    env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    points = []
    method = ""
    for steps in cfg["memory_steps"]:
        if cfg["memory_in_process"]:
            result = step_memory(steps, filters, size, batch)
        else:
            out = subprocess.run(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--memory-child",
                    f"{steps},{filters},{size},{batch}",
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
        method = result["method"]
        points.append((steps, result["peak"]))
        print(f"  K={steps}: {result['peak'] / 2**20:.1f} MiB", flush=True)
    k = np.array([p[0] for p in points], dtype="float64")
    peak = np.array([p[1] for p in points], dtype="float64")
    slope, intercept = np.polyfit(k, peak, 1)
    fitted = slope * k + intercept
    ss_res = float(np.sum((peak - fitted) ** 2))
    ss_tot = float(np.sum((peak - peak.mean()) ** 2)) or 1.0
    state_bytes = batch * size * size * filters * 4
    rows.append(
        {
            "item": "peak memory slope / state size",
            "config": (
                f"{filters} filters, {size}x{size}, batch {batch}, "
                f"K={','.join(str(s) for s in cfg['memory_steps'])}; "
                f"{slope / 2**20:.2f} MiB per step, R^2 "
                f"{1 - ss_res / ss_tot:.3f}; {method}"
            ),
            "ratio": slope / state_bytes,
            "target": "linear",
            "a": None,
            "b": None,
            "memory": [(int(s), int(p)) for s, p in points],
        }
    )


# --------------------------------------------------------------------------
# CIFAR-10: input pipeline, whole models, adaptive depth.


def cifar_pipeline(data_dir, split, batch, take, augment):
    """The examples' CIFAR-10 pipeline (`keras_naisnet.data`), repeated."""
    return data.load_image_classification(
        "cifar10",
        split,
        batch,
        data_dir=data_dir,
        take=take,
        augment=augment,
        shuffle=augment,
        seed=0,
        drop_remainder=True,
        repeat=True,
    )


def _classifier(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def bench_models(cfg, rows, data_dir):
    """Training throughput of NAIS-Net and ResNets, and the pipeline alone.

    NAIS-Net with one block of `model_steps` steps per stage against the
    ResNet with the same convolutions and untied weights
    (`"resnet-untied"`), and against the standard CIFAR ResNet
    (ResNet-20, or ResNet-8 with `--quick`).
    """
    batch = cfg["model_batch"]
    steps = cfg["model_steps"]
    names = {
        "nais": f"NAIS-Net{steps}",
        "untied": f"ResNet, untied, {steps} steps",
        "resnet": f"ResNet-{6 * cfg['resnet_blocks'] + 2}",
    }
    archs = {
        "nais": models.build_model("naisnet", steps, blocks_per_stage=1),
        "untied": models.build_model(
            "resnet-untied", steps, blocks_per_stage=1
        ),
        "resnet": models.build_model(
            "resnet", blocks_per_stage=cfg["resnet_blocks"]
        ),
    }
    ds = cifar_pipeline(data_dir, "train", batch, cfg["train_images"], True)
    batches = ds.as_numpy_iterator()
    # One pass fills the pipeline's cache: later epochs read from memory.
    for _ in range(cfg["train_images"] // batch):
        next(batches)

    def fitter(model):
        _classifier(model)

        def run():
            x, y = next(batches)
            model.train_on_batch(x, y)

        return run

    times = side_by_side(
        {key: fitter(model) for key, model in archs.items()},
        cfg["model_reps"],
        0.0,
    )
    for key in ("untied", "resnet"):
        rows.append(
            {
                "item": f"training images/s: {names['nais']} / {names[key]}",
                "config": (
                    f"batch {batch}, CIFAR-10 pipeline, "
                    f"{archs['nais'].count_params()} vs "
                    f"{archs[key].count_params()} parameters"
                ),
                "ratio": median_ratio(times, key, "nais"),
                "target": "",
                "a": med(times["nais"]),
                "b": med(times[key]),
                "batch": batch,
            }
        )
    # The pipeline alone, from its cache, as in every epoch after the first.
    start = time.perf_counter()
    for _ in range(cfg["pipeline_batches"]):
        next(batches)
    per_batch = (time.perf_counter() - start) / cfg["pipeline_batches"]
    rows.append(
        {
            "item": f"input pipeline alone / {names['nais']} training step",
            "config": f"batch {batch}, cached, shuffle + flip + crop",
            "ratio": per_batch / med(times["nais"]),
            "target": "",
            "a": per_batch,
            "b": med(times["nais"]),
            "batch": batch,
        }
    )


def _steps_per_block(model, images, tol, max_steps):
    """Mean number of steps each NAIS block call of `model` took per image."""
    probe = stability.with_unroll(
        model, tol=tol, max_steps=max_steps, return_steps=True
    )
    _, steps = probe.predict(images, verbose=0)
    return [float(d) for d in np.mean(steps, axis=0)]


def trained_model(cfg, data_dir, path):
    """Loads `path`, or trains NAIS-Net on CIFAR-10 for a short budget."""
    if path:
        return keras.saving.load_model(path), f"loaded from {path}"
    model = models.build_model(
        "naisnet", cfg["model_steps"], blocks_per_stage=1
    )
    _classifier(model)
    batch = cfg["train_batch"]
    ds = cifar_pipeline(data_dir, "train", batch, cfg["train_images"], True)
    start = time.perf_counter()
    history = model.fit(
        ds, steps_per_epoch=cfg["train_steps"], epochs=1, verbose=0
    )
    seconds = time.perf_counter() - start
    accuracy = history.history["accuracy"][-1]
    return model, (
        f"NAIS-Net{cfg['model_steps']} (1 block per stage) trained here for "
        f"{cfg['train_steps']} steps of {batch} images ({seconds:.0f} s, "
        f"train accuracy {accuracy:.2f})"
    )


def bench_depth(cfg, rows, data_dir, model_path):
    """Adaptive depth against a fixed `max_steps`, on CIFAR-10 test."""
    model, origin = trained_model(cfg, data_dir, model_path)
    max_steps = max(b.num_steps for b in stability.nais_blocks(model))
    count = cfg["test_images"]
    ds = cifar_pipeline(data_dir, "test", count, count, False)
    images, _ = next(ds.as_numpy_iterator())
    fixed = stability.with_unroll(model, num_steps=max_steps)
    batch = min(250, count)
    chunks = [images[i : i + batch] for i in range(0, count, batch)]

    def predictor(m):
        def run():
            for chunk in chunks:
                m.predict_on_batch(chunk)

        return run

    for tol in cfg["tols"]:
        adaptive = stability.with_unroll(model, tol=tol, max_steps=max_steps)
        times = side_by_side(
            {"adaptive": predictor(adaptive), "fixed": predictor(fixed)},
            cfg["model_reps"],
            0.0,
        )
        depths = _steps_per_block(model, images, tol, max_steps)
        rows.append(
            {
                "item": f"inference images/s: tol={tol:g} / fixed depth",
                "config": (
                    f"{count} test images, max_steps={max_steps}, mean "
                    "steps per block "
                    + ", ".join(f"{d:.2f}" for d in depths)
                    + f"; model: {origin}"
                ),
                "ratio": median_ratio(times, "fixed", "adaptive"),
                "target": "",
                "a": med(times["adaptive"]),
                "b": med(times["fixed"]),
                "batch": count,
            }
        )


# --------------------------------------------------------------------------
# Output.


def _seconds(value):
    if value is None:
        return ""
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.2f} ms"
    return f"{value:.2f} s"


def _rate(row, key):
    if row.get(key) is None or not row.get("batch"):
        return ""
    return f"{row['batch'] / row[key]:.0f}"


def table(rows):
    """The rows as a Markdown table."""
    lines = [
        "| measurement | setting | ratio | target | A | B | A img/s "
        "| B img/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['item']} | {row['config']} | {row['ratio']:.3f} "
            f"| {row['target']} | {_seconds(row['a'])} "
            f"| {_seconds(row['b'])} | {_rate(row, 'a')} "
            f"| {_rate(row, 'b')} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smallest settings (seconds); numbers are not meaningful",
    )
    parser.add_argument(
        "--items",
        default=",".join(ITEMS),
        help=f"comma-separated subset of {','.join(ITEMS)}",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="trained .keras model for the depth item (default: train one)",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("TFDS_DATA_DIR"),
        help="TFDS data directory (default: $TFDS_DATA_DIR or TFDS's own)",
    )
    parser.add_argument("--json", default=None, help="also write rows here")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        values = (int(v) for v in args.memory_child.split(","))
        print(json.dumps(step_memory(*values)))
        return

    cfg = SETTINGS["quick" if args.quick else "full"]
    items = [item for item in args.items.split(",") if item]
    unknown = sorted(set(items) - set(ITEMS))
    if unknown:
        raise ValueError(
            f"`--items` must be a subset of {ITEMS}. Received: items={unknown}"
        )
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    info = hardware()
    print("Hardware and versions:", flush=True)
    for key, value in info.items():
        print(f"  {key}: {value}", flush=True)
    rows = []
    start = time.perf_counter()
    for item in items:
        print(f"[{item}]", flush=True)
        if item == "block":
            bench_block(cfg, rows, rng)
        elif item == "modes":
            bench_modes(cfg, rows, rng)
        elif item == "jit":
            bench_jit(cfg, rows, rng)
        elif item == "memory":
            bench_memory(cfg, rows, rng)
        elif item == "models":
            bench_models(cfg, rows, args.data_dir)
        elif item == "depth":
            bench_depth(cfg, rows, args.data_dir, args.model)
    elapsed = time.perf_counter() - start
    print()
    print(
        "A and B are the median times of the two sides; ratio is the median "
        "of A / B over alternating repetitions (for images/s rows, of B / A: "
        "the throughput of the first side over the second)."
    )
    print(table(rows))
    print(f"\nTotal benchmark time: {elapsed:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hardware": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
