"""Answers' masks as segments of a segmentation node on the input volume's grid.

One segmentation node per conversation holds every segment its answers produced. The
node references the input volume (reference image geometry), sits under the same
parent transform, and is only ever created new: existing nodes and segments are
never written to. Segments carry their turn and state as tags, their standard meaning
as a terminology entry when the structure is known, and a segment status ("in
progress" while proposed, "completed" once accepted) that the Segment Editor shows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import slicer
import vtk
from medsegr.errors import InputError
from vtk.util import numpy_support

from MedSegRLib import terminology
from MedSegRLib.volume_geometry import check_volume, ijk_to_ras, numpy_to_vtk_matrix

TAG_CONVERSATION = "MedSegR.Conversation"
TAG_TURN = "MedSegR.Turn"
TAG_REQUEST = "MedSegR.RequestId"
TAG_ENGINE_NAME = "MedSegR.EngineName"
#: node attribute that marks a segmentation node as a conversation's results
ATTRIBUTE_CONVERSATION = "MedSegR.Conversation"

_Logic = slicer.vtkSlicerSegmentationsModuleLogic


@dataclass(frozen=True)
class NewSegment:
    """A mask to add: bool ``(z, y, x)`` on the volume's grid, and the name the answer gave."""

    name: str
    mask: np.ndarray


@dataclass(frozen=True)
class WrittenSegment:
    """A segment as it was added to the node."""

    id: str
    name: str
    color: tuple[float, float, float]
    voxels: int
    terminology: str | None


def create_segmentation_node(scene: Any, volume_node: Any, name: str, conversation_id: str) -> Any:
    """A new segmentation node for a conversation's results on ``volume_node``."""
    check_volume(volume_node)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    node.SetAttribute(ATTRIBUTE_CONVERSATION, conversation_id)
    transform_id = volume_node.GetTransformNodeID()
    if transform_id:
        node.SetAndObserveTransformNodeID(transform_id)
    return node


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:40] or "segment"


def _labelmap(mask: np.ndarray, ijk_to_ras_matrix: np.ndarray) -> Any:
    """A vtkOrientedImageData holding the mask's bounding box on the volume's grid."""
    data = np.asarray(mask, dtype=bool)
    nonzero = np.argwhere(data)
    if len(nonzero):
        (z0, y0, x0), (z1, y1, x1) = nonzero.min(axis=0), nonzero.max(axis=0)
    else:  # an empty mask: one background voxel
        z0 = y0 = x0 = z1 = y1 = x1 = 0
    crop = np.ascontiguousarray(data[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1], dtype=np.uint8)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(int(x0), int(x1), int(y0), int(y1), int(z0), int(z1))
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(crop.ravel(), deep=True))
    image.SetImageToWorldMatrix(numpy_to_vtk_matrix(ijk_to_ras_matrix))
    return image


def _used_colors(segmentation: Any) -> list[tuple[float, float, float]]:
    return [tuple(segmentation.GetNthSegment(i).GetColor())  # type: ignore[misc]
            for i in range(segmentation.GetNumberOfSegments())]


def write_segments(segmentation_node: Any, volume_node: Any, segments: Sequence[NewSegment],
                   tags: dict[str, str]) -> list[WrittenSegment]:
    """Add one new segment per mask; all or nothing (a failure removes what was added)."""
    shape = check_volume(volume_node)
    for segment in segments:
        if tuple(np.shape(segment.mask)) != shape:
            raise InputError(f"the mask of {segment.name!r} has shape {tuple(np.shape(segment.mask))} "
                             f"but volume {volume_node.GetName()!r} has {shape}; the volume changed "
                             "since it was sent, ask again")
    segmentation = segmentation_node.GetSegmentation()
    matrix = ijk_to_ras(volume_node)
    written: list[WrittenSegment] = []
    try:
        for number, segment in enumerate(segments, start=1):
            name = " ".join(str(segment.name).split()) or f"Segment {number}"
            match = terminology.lookup(name)
            color = match.color if match else terminology.palette_color(_used_colors(segmentation))
            segment_id = segmentation.GenerateUniqueSegmentID(f"MedSegR_{_slug(name)}")
            added = segmentation.AddEmptySegment(segment_id, name, list(color))
            if added != segment_id:
                raise RuntimeError(f"could not add segment {name!r}")
            voxels = int(np.count_nonzero(segment.mask))
            written.append(WrittenSegment(segment_id, name, tuple(color), voxels,  # type: ignore[arg-type]
                                          match.entry if match else None))
            if voxels and not _Logic.SetBinaryLabelmapToSegment(
                    _labelmap(segment.mask, matrix), segmentation_node, segment_id, _Logic.MODE_REPLACE):
                raise RuntimeError(f"could not write the mask of {name!r}")
            vtk_segment = segmentation.GetSegment(segment_id)
            for key, value in tags.items():
                vtk_segment.SetTag(key, str(value))
            vtk_segment.SetTag(TAG_ENGINE_NAME, str(segment.name))
            if match:
                vtk_segment.SetTerminology(_standard_entry(match.entry))
            _Logic.SetSegmentStatus(vtk_segment, _Logic.InProgress)
    except Exception:
        for done in written:
            segmentation.RemoveSegment(done.id)
        raise
    return written


def _standard_entry(entry: str) -> str:
    """The terminology string, completed by Slicer's terminology logic when the
    Terminologies module is loaded (standard meanings of the loaded lists); as given
    otherwise (a plain MRML scene)."""
    modules = getattr(slicer, "modules", None)
    module = getattr(modules, "terminologies", None) if modules is not None else None
    if module is None:
        return entry
    logic = module.logic()
    parsed = slicer.vtkSlicerTerminologyEntry()
    if not logic.DeserializeTerminologyEntry(entry, parsed):
        return entry
    logic.UpdateEntryFromLoadedTerminologies(parsed)
    return logic.SerializeTerminologyEntry(parsed) or entry


def uncoded_note(written: Sequence[WrittenSegment]) -> str | None:
    """What to tell the user about segments that have no standard code, or None."""
    names = [w.name for w in written if w.terminology is None]
    if not names:
        return None
    return "no standard code for " + ", ".join(repr(n) for n in names) + " (kept with its free-text name)"


def segment_tag(segmentation_node: Any, segment_id: str, key: str) -> str | None:
    """A tag of a segment, or None when the segment or the tag is not there."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    value = vtk.reference("")
    if segment is None or not segment.GetTag(key, value):
        return None
    return str(value)


def _existing(segmentation_node: Any, segment_ids: Sequence[str]) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [sid for sid in segment_ids if segmentation.GetSegment(sid) is not None]


def set_accepted(segmentation_node: Any, segment_ids: Sequence[str], accepted: bool = True) -> list[str]:
    """Mark segments as accepted (status "completed") or proposed again."""
    segmentation = segmentation_node.GetSegmentation()
    ids = _existing(segmentation_node, segment_ids)
    for sid in ids:
        _Logic.SetSegmentStatus(segmentation.GetSegment(sid), _Logic.Completed if accepted else _Logic.InProgress)
    return ids


def set_visible(segmentation_node: Any, segment_ids: Sequence[str], visible: bool) -> list[str]:
    display = segmentation_node.GetDisplayNode()
    ids = _existing(segmentation_node, segment_ids)
    if display is not None:
        for sid in ids:
            display.SetSegmentVisibility(sid, bool(visible))
    return ids


def is_visible(segmentation_node: Any, segment_id: str) -> bool:
    display = segmentation_node.GetDisplayNode()
    return bool(display.GetSegmentVisibility(segment_id)) if display is not None else True


def is_accepted(segmentation_node: Any, segment_id: str) -> bool:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return segment is not None and _Logic.GetSegmentStatus(segment) == _Logic.Completed


def remove_segments(segmentation_node: Any, segment_ids: Sequence[str]) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    ids = _existing(segmentation_node, segment_ids)
    for sid in ids:
        segmentation.RemoveSegment(sid)
    return ids


def segment_mask(segmentation_node: Any, segment_id: str, volume_node: Any) -> np.ndarray:
    """A segment as bool ``(z, y, x)`` on ``volume_node``'s grid."""
    shape = check_volume(volume_node)
    labelmap = slicer.vtkOrientedImageData()
    if not segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap):
        raise InputError(f"segment {segment_id!r} has no binary labelmap")
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(0, shape[2] - 1, 0, shape[1] - 1, 0, shape[0] - 1)
    reference.SetImageToWorldMatrix(numpy_to_vtk_matrix(ijk_to_ras(volume_node)))
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, True):
        raise InputError(f"cannot resample segment {segment_id!r} onto {volume_node.GetName()!r}")
    scalars = resampled.GetPointData().GetScalars()
    if scalars is None:
        return np.zeros(shape, dtype=bool)
    return numpy_support.vtk_to_numpy(scalars).reshape(shape) > 0
