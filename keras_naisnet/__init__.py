"""keras_naisnet: provably stable deep-network blocks for Keras 3.

NAIS-Net blocks (Ciccone et al., "NAIS-Net: Stable Deep Networks from
Non-Autonomous Differential Equations", NeurIPS 2018, arXiv:1804.07209)
unroll a stable, input-driven recurrence in depth. See `NaisDenseBlock` and
`NaisConvBlock`.
"""

from keras_naisnet import constraints as constraints
from keras_naisnet import initializers as initializers
from keras_naisnet import stability as stability
from keras_naisnet.base_block import (
    NaisStabilityWarning as NaisStabilityWarning,
)
from keras_naisnet.conv_block import NaisConvBlock as NaisConvBlock
from keras_naisnet.dense_block import NaisDenseBlock as NaisDenseBlock

__version__ = "0.1.0"
