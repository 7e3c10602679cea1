"""Initializers that start NAIS blocks near unit gain.

At its equilibrium a convolutional block maps its input term to roughly
`input_term / |centre|` per channel, where `centre` is the centre tap of the
channel's own filter in the state kernel. A Glorot-initialized state kernel
has centre taps near 0, which the stability projection clips to `-eta`,
giving every block a gain near `1 / eta`; stacked blocks multiply their gains
and training diverges. `ConvStateInitializer` instead sets the centre taps to
`-1` (gain 1: the state reaches the input term in a single step of size 1)
and spreads a small, fixed L1 mass over the other taps.
"""

import keras
from keras import ops

from keras_naisnet.constraints import centre_tap_mask


@keras.saving.register_keras_serializable(package="keras_naisnet")
class ConvStateInitializer(keras.initializers.Initializer):
    """Initializes a state kernel with centre taps at `centre`.

    The off-centre taps are drawn from a normal distribution and rescaled
    so that, for every output channel, their absolute values sum to
    `off_centre_norm` (the quantity that the stability condition budgets).

    Args:
        centre: float, the value of every centre tap `C[kh//2, kw//2, c, c]`.
        off_centre_norm: non-negative float, the L1 norm of the other taps
            of each output channel.
        seed: optional integer seed.

    Example:

    >>> init = ConvStateInitializer(centre=-1.0, off_centre_norm=0.5, seed=1)
    >>> kernel = init((3, 3, 8, 8))
    >>> tuple(kernel.shape)
    (3, 3, 8, 8)
    """

    def __init__(self, centre=-1.0, off_centre_norm=0.5, seed=None):
        if off_centre_norm < 0:
            raise ValueError(
                "`off_centre_norm` must be non-negative. "
                f"Received: off_centre_norm={off_centre_norm}"
            )
        self.centre = float(centre)
        self.off_centre_norm = float(off_centre_norm)
        self.seed = seed
        self._normal = keras.initializers.RandomNormal(seed=seed)

    def __call__(self, shape, dtype=None):
        if len(shape) != 4 or shape[2] != shape[3]:
            raise ValueError(
                "ConvStateInitializer needs a kernel shape (kh, kw, c, c). "
                f"Received: shape={tuple(shape)}"
            )
        dtype = dtype or keras.backend.floatx()
        mask = centre_tap_mask(shape[:2], shape[3], dtype)
        off_centre = self._normal(shape, dtype=dtype) * (1.0 - mask)
        l1 = ops.sum(ops.abs(off_centre), axis=(0, 1, 2))
        # A 1 x 1 kernel with one channel has no off-centre taps at all.
        l1 = ops.where(l1 > 0, l1, ops.ones_like(l1))
        off_centre = off_centre * (self.off_centre_norm / l1)
        return off_centre + self.centre * mask

    def get_config(self):
        return {
            "centre": self.centre,
            "off_centre_norm": self.off_centre_norm,
            "seed": self.seed,
        }
