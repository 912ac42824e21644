"""i-LN for image restoration Transformers, as a thin package on top of the PyPI BasicSR.

Importing this package makes BasicSR importable on current torchvision and registers our
architectures, models, datasets and metrics into BasicSR's registries.
"""
from . import compat  # noqa: F401  (must run before anything imports basicsr)
from . import archs, data, metrics, models  # noqa: F401,E402

__version__ = '0.1.0'
