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
