"""Faults: training killed mid-epoch, resumed, and checkpoints reloaded.

A callback raises in the middle of an epoch, standing in for a killed
process. A new model (fresh initial weights, as after a restart) trained
with the same `keras.callbacks.BackupAndRestore` directory resumes from
the last completed epoch and ends with the weights of an uninterrupted run
and with the stability conditions holding. A `ModelCheckpoint` file
reloads without the original objects and predicts like the live model.
"""

import keras
import numpy as np
import pytest

from keras_naisnet import stability
from tests import hardmode_utils as hm

EPOCHS = 3
CRASH_EPOCH = 1
CRASH_BATCH = 1
# The resumed run repeats the same float32 operations from restored
# weights; only the optimizer's iteration count could differ, and SGD
# without momentum does not use it.
WEIGHT_ATOL = 1e-6


class _Crash(Exception):
    pass


class _CrashAt(keras.callbacks.Callback):
    """Raises at the start of a given batch of a given epoch."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.crash_epoch, self.crash_batch = epoch, batch
        self.epoch = None
        self.weights_at_epoch_end = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == (self.crash_epoch, self.crash_batch):
            raise _Crash(f"killed in epoch {self.epoch} at batch {batch}")

    def on_epoch_end(self, epoch, logs=None):
        self.weights_at_epoch_end[epoch] = self.model.get_weights()


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []
        self.weights_at_start = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.weights_at_start is None:
            self.weights_at_start = self.model.get_weights()
        self.epochs.append(epoch)


def _fit(model, callbacks):
    x, y = hm.make_inputs("both")
    return model.fit(
        x,
        y,
        batch_size=8,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )


def test_backup_and_restore_resumes_after_crash(tmp_path):
    initial = hm.make_model("both").get_weights()
    backup_dir = str(tmp_path / "backup")

    crashed = hm.compile_for_training(hm.make_model("both"))
    crashed.set_weights(initial)
    crash = _CrashAt(CRASH_EPOCH, CRASH_BATCH)
    with pytest.raises(_Crash):
        _fit(crashed, [keras.callbacks.BackupAndRestore(backup_dir), crash])
    # Epoch 0 completed; epoch 1 was cut after one of its two batches.
    assert sorted(crash.weights_at_epoch_end) == [0]

    restarted = hm.compile_for_training(hm.make_model("both"))
    recorder = _Recorder()
    _fit(restarted, [keras.callbacks.BackupAndRestore(backup_dir), recorder])
    assert recorder.epochs == list(range(CRASH_EPOCH, EPOCHS))
    assert (
        hm.max_weight_difference(
            [np.float64(w) for w in recorder.weights_at_start],
            [np.float64(w) for w in crash.weights_at_epoch_end[0]],
        )
        == 0.0
    )

    uninterrupted = hm.compile_for_training(hm.make_model("both"))
    uninterrupted.set_weights(initial)
    _fit(uninterrupted, [])
    assert (
        hm.max_weight_difference(
            hm.weights_as_numpy(restarted), hm.weights_as_numpy(uninterrupted)
        )
        < WEIGHT_ATOL
    )
    assert stability.check(restarted).passed


@pytest.mark.parametrize("depth", ("fixed", "adaptive"))
def test_model_checkpoint_reloads_and_predicts_the_same(tmp_path, depth):
    kwargs = {"tol": 1e-3, "max_steps": 30} if depth == "adaptive" else {}
    model = hm.compile_for_training(hm.make_model("both", **kwargs))
    path = str(tmp_path / "checkpoint.keras")
    _fit(model, [keras.callbacks.ModelCheckpoint(path)])

    reloaded = keras.saving.load_model(path)
    x, _ = hm.make_inputs("both", batch=4, seed=3)
    np.testing.assert_array_equal(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    assert reloaded.get_layer("block").get_config() == (
        model.get_layer("block").get_config()
    )
    assert stability.check(reloaded).passed
