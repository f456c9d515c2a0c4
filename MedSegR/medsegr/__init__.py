"""MedSegR: reasoning segmentation for medical images.

Importing this package is cheap: it pulls in neither torch nor transformers, so
that the 3D Slicer module and the standard-library client can use it at start-up.
The heavy parts live in :mod:`medsegr.pipeline` and :mod:`medsegr.modeling`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from medsegr import _moved
from medsegr.errors import CheckpointError, ConfigError, InputError, MedSegRError, WeightError

_moved.install()

__all__ = [
    "__version__",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "MedSegRError",
    "WeightError",
]
