"""A conversation's segments as a DICOM Segmentation (SEG) for PACS.

The source volume must have been loaded from DICOM (it carries ``DICOM.instanceUIDs``);
its files are found through Slicer's DICOM database. The segments are written with
the engine's own DICOM SEG writer (:mod:`medsegr.io.dicom_seg`, highdicom): the same
references, SNOMED CT codes and algorithm identification as ``medsegr ask`` writes.
Each slice of the volume is matched to its instance by position. The file is
written atomically; nothing in the scene changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from medsegr.errors import InputError

from MedSegRLib import scene_store, segmentation_results, study_placement
from MedSegRLib.volume_geometry import RAS_TO_LPS, check_volume, ijk_to_ras

INSTALL_HINT = ("DICOM SEG export needs the Python packages highdicom and pydicom in 3D Slicer's "
                "Python; install them from the Python console with "
                "slicer.util.pip_install('highdicom==0.28.2')")

FileForInstance = Callable[[str], str]


def can_export(volume_node: Any | None) -> bool:
    """True when ``volume_node`` came from DICOM, so a DICOM SEG can reference it."""
    return volume_node is not None and bool(study_placement.instance_uids(volume_node))


def _dicom_database_lookup() -> FileForInstance:
    import slicer

    database = getattr(slicer, "dicomDatabase", None)
    if database is None:
        raise InputError("3D Slicer's DICOM database is not available: open the DICOM module once")
    return lambda uid: str(database.fileForInstance(uid) or "")


def _native_geometry(volume_node: Any) -> Any:
    """The volume's own grid (not moved by parent transforms) as an ITK/LPS geometry."""
    from medsegr.io.images import ImageGeometry

    shape = check_volume(volume_node)
    matrix = ijk_to_ras(volume_node)
    linear = matrix[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = RAS_TO_LPS @ (linear / spacing)
    origin = RAS_TO_LPS @ matrix[:3, 3]
    return ImageGeometry(shape, tuple(float(v) for v in spacing), tuple(float(v) for v in origin),  # type: ignore[arg-type]
                         tuple(float(v) for v in direction.ravel()))


def source_files(volume_node: Any, file_for_instance: FileForInstance | None = None) -> list[Path]:
    """The DICOM files of ``volume_node``'s instances (raises when any is not found)."""
    uids = study_placement.instance_uids(volume_node)
    if not uids:
        raise InputError(f"volume {volume_node.GetName()!r} was not loaded from DICOM (it has no "
                         f"{study_placement.VOLUME_INSTANCE_UIDS}); DICOM SEG needs a DICOM series")
    lookup = file_for_instance or _dicom_database_lookup()
    files = [lookup(uid) for uid in uids]
    missing = sum(1 for f in files if not f or not Path(f).is_file())
    if missing:
        raise InputError(f"{missing} of the {len(uids)} DICOM files of volume {volume_node.GetName()!r} "
                         "are not in the DICOM database or no longer on disk")
    return [Path(f) for f in files]


def export_conversation(conversation_node: Any, path: str | os.PathLike[str],
                        file_for_instance: FileForInstance | None = None) -> Path:
    """Write the conversation's segments (those not removed) as a DICOM SEG at ``path``.

    Args:
        file_for_instance: SOP instance UID -> file path (default: Slicer's DICOM database).
    """
    try:
        from medsegr.io import dicom_seg
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"folder {str(target.parent)!r} does not exist")
    volume = scene_store.volume_node(conversation_node)
    if volume is None:
        raise InputError("the conversation's volume was removed from the scene")
    segmentation = scene_store.segmentation_node(conversation_node)
    if segmentation is None:
        raise InputError("this conversation has no segments to export")
    conversation = scene_store.load(conversation_node)
    series = dicom_seg.read_series(source_files(volume, file_for_instance), _native_geometry(volume))
    segments = []
    vtk_segmentation = segmentation.GetSegmentation()
    for turn in conversation.turns:
        for record in turn.segments:
            segment = vtk_segmentation.GetSegment(record.id)
            if record.state == "removed" or segment is None:
                continue
            mask = segmentation_results.segment_mask(segmentation, record.id, volume)
            color = tuple(int(round(c * 255)) for c in segment.GetColor())
            name = segmentation_results.segment_tag(segmentation, record.id,
                                                    segmentation_results.TAG_ENGINE_NAME) or segment.GetName()
            segments.append(dicom_seg.SegmentInput(name, mask, color))  # type: ignore[arg-type]
    if not segments:
        raise InputError("this conversation has no segments to export")
    engine = conversation.engine or {}
    model = engine.get("model")
    dicom_seg.write_dicom_seg(target, series, segments, checkpoint=str(model) if model else None,
                              fine_tuned=bool(engine.get("fine_tuned", True)),
                              series_description=f"MedSegR: {conversation.title}")
    return target


__all__ = ["INSTALL_HINT", "can_export", "export_conversation", "source_files"]
