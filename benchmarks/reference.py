"""Hand-written Keras code that the benchmarks compare the blocks against.

`SharedConvLoop` is what a user would write without this package: the
same convolutions as a `NaisConvBlock` (one input convolution, then
`num_steps` state convolutions with one shared kernel), with no stability
constraint and no library code in the loop.
"""

import keras
from keras import ops


class SharedConvLoop(keras.layers.Layer):
    """`x <- x + h * tanh(conv(x, C) + conv(u, D) + E)`, hand-written.

    Args:
        filters: number of state channels.
        num_steps: number of unroll steps.
        kernel_size: odd size of both kernels.
        step_size: the step size `h`.
        strides: stride of the input convolution.

    Example:

    >>> layer = SharedConvLoop(8, num_steps=3)
    >>> layer(np.zeros((2, 16, 16, 3), "float32")).shape
    (2, 16, 16, 8)
    """

    def __init__(
        self,
        filters,
        num_steps,
        kernel_size=3,
        step_size=1.0,
        strides=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.num_steps = num_steps
        self.kernel_size = kernel_size
        self.step_size = step_size
        self.strides = strides

    def build(self, input_shape):
        k = self.kernel_size
        self.state_kernel = self.add_weight(
            name="state_kernel",
            shape=(k, k, self.filters, self.filters),
            initializer=keras.initializers.RandomNormal(stddev=0.01),
        )
        self.input_kernel = self.add_weight(
            name="input_kernel",
            shape=(k, k, input_shape[-1], self.filters),
            initializer="he_normal",
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.filters,), initializer="zeros"
        )

    def call(self, inputs):
        input_term = (
            ops.conv(inputs, self.input_kernel, self.strides, padding="same")
            + self.bias
        )
        state = ops.zeros_like(input_term)
        for _ in range(self.num_steps):
            z = ops.conv(state, self.state_kernel, padding="same")
            state = state + self.step_size * ops.tanh(z + input_term)
        return state
