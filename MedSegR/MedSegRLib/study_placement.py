"""Results placed where 3D Slicer users look for them: under the source volume's study.

In the subject hierarchy a volume loaded from DICOM sits under its study, the study
under its patient. An answer's segmentation node and its conversation node go under
that same study (or, for a volume without a study, next to the volume: under its
folder or patient, or at the scene root), so the Data module shows them with the
images they describe.

For DICOM export the segmentation also references its source: the
``referenceImageGeometryRef`` node reference names the volume, the subject hierarchy
item lists the volume's instances (``DICOM.ReferencedInstanceUIDs``, what Slicer's
DICOM SEG exporter requires), and each segment says it was made automatically by
MedSegR (``DICOM.SegmentAlgorithmType`` / ``DICOM.SegmentAlgorithmName``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import slicer

#: attribute of a volume loaded from DICOM: its SOP instance UIDs, slice by slice
VOLUME_INSTANCE_UIDS = "DICOM.instanceUIDs"
#: subject hierarchy item attribute Slicer's DICOM SEG exporter reads
REFERENCED_INSTANCE_UIDS = "DICOM.ReferencedInstanceUIDs"
TAG_ALGORITHM_TYPE = "DICOM.SegmentAlgorithmType"
TAG_ALGORITHM_NAME = "DICOM.SegmentAlgorithmName"
ALGORITHM_TYPE = "AUTOMATIC"
ALGORITHM_NAME = "MedSegR"


def subject_hierarchy(scene: Any) -> Any:
    node = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if node is None:
        raise RuntimeError("the scene has no subject hierarchy")
    return node


def instance_uids(volume_node: Any) -> list[str]:
    """The DICOM SOP instance UIDs the volume was loaded from (empty: not from DICOM)."""
    return (volume_node.GetAttribute(VOLUME_INSTANCE_UIDS) or "").split()


def result_parent(scene: Any, volume_node: Any) -> int:
    """The subject hierarchy item results of ``volume_node`` go under: its study when it
    has one, else its own parent (folder, patient), else the scene."""
    sh = subject_hierarchy(scene)
    study_level = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
    item = sh.GetItemByDataNode(volume_node)
    if not item:
        return int(sh.GetSceneItemID())
    parent = sh.GetItemParent(item)
    ancestor = parent
    while ancestor and ancestor != sh.GetSceneItemID():
        if sh.GetItemLevel(ancestor) == study_level:
            return int(ancestor)
        ancestor = sh.GetItemParent(ancestor)
    return int(parent or sh.GetSceneItemID())


def place(scene: Any, node: Any, volume_node: Any) -> int:
    """Move ``node`` under the study (or parent) of ``volume_node``; returns that item."""
    sh = subject_hierarchy(scene)
    parent = result_parent(scene, volume_node)
    item = sh.GetItemByDataNode(node) or sh.CreateItem(parent, node)
    if sh.GetItemParent(item) != parent:
        sh.SetItemParent(item, parent)
    return parent


def reference_source(scene: Any, segmentation_node: Any, volume_node: Any,
                     segment_ids: Iterable[str] = ()) -> None:
    """Make ``segmentation_node`` reference ``volume_node`` the way DICOM SEG export needs:
    geometry and node reference, the volume's instance UIDs on its subject hierarchy
    item, and MedSegR as the automatic algorithm of ``segment_ids``."""
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segmentation_node.SetNodeReferenceID(segmentation_node.GetReferenceImageGeometryReferenceRole(),
                                         volume_node.GetID())
    uids = instance_uids(volume_node)
    if uids:
        sh = subject_hierarchy(scene)
        item = sh.GetItemByDataNode(segmentation_node)
        if item:
            sh.SetItemAttribute(item, REFERENCED_INSTANCE_UIDS, " ".join(uids))
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        if segment is not None:
            segment.SetTag(TAG_ALGORITHM_TYPE, ALGORITHM_TYPE)
            segment.SetTag(TAG_ALGORITHM_NAME, ALGORITHM_NAME)


def place_results(scene: Any, volume_node: Any, segmentation_node: Any | None, conversation_node: Any | None,
                  segment_ids: Iterable[str] = ()) -> int:
    """Put an answer's segmentation and conversation under the volume's study and make the
    segmentation reference its source; returns the parent item."""
    parent = result_parent(scene, volume_node)
    if segmentation_node is not None:
        place(scene, segmentation_node, volume_node)
        reference_source(scene, segmentation_node, volume_node, segment_ids)
    if conversation_node is not None:
        place(scene, conversation_node, volume_node)
    return parent


__all__ = ["ALGORITHM_NAME", "ALGORITHM_TYPE", "REFERENCED_INSTANCE_UIDS", "TAG_ALGORITHM_NAME",
           "TAG_ALGORITHM_TYPE", "VOLUME_INSTANCE_UIDS", "instance_uids", "place", "place_results",
           "reference_source", "result_parent", "subject_hierarchy"]
