"""Conversations kept in the MRML scene, next to their segments.

Each conversation is a text node (its JSON, see :mod:`MedSegRLib.conversation`)
marked with the ``MedSegR.Conversation`` attribute, referencing its input volume and
its segmentation node. Text nodes are saved with the scene (in the ``.mrml`` or as a
``.txt`` beside it in an ``.mrb``), so reopening a scene restores the chat.
"""

from __future__ import annotations

from typing import Any

from MedSegRLib.conversation import Conversation, ConversationFormatError

ATTRIBUTE = "MedSegR.Conversation"
ROLE_VOLUME = "MedSegRVolume"
ROLE_SEGMENTATION = "MedSegRSegmentation"
NODE_NAME_PREFIX = "MedSegR chat"
SEGMENTATION_NAME_PREFIX = "MedSegR"


def create_conversation_node(scene: Any, conversation: Conversation, volume_node: Any) -> Any:
    node = scene.AddNewNodeByClass("vtkMRMLTextNode",
                                   scene.GenerateUniqueName(f"{NODE_NAME_PREFIX}: {conversation.title}"))
    node.SetAttribute(ATTRIBUTE, conversation.id)
    node.SetNodeReferenceID(ROLE_VOLUME, volume_node.GetID())
    save(node, conversation)
    return node


def save(node: Any, conversation: Conversation) -> None:
    if node.GetAttribute(ATTRIBUTE) != conversation.id:
        raise ValueError(f"text node {node.GetName()!r} holds another conversation")
    node.SetText(conversation.to_json())


def load(node: Any) -> Conversation:
    conversation = Conversation.from_json(node.GetText() or "")
    if conversation.id != node.GetAttribute(ATTRIBUTE):
        raise ConversationFormatError(f"text node {node.GetName()!r} holds conversation "
                                      f"{conversation.id} but is marked {node.GetAttribute(ATTRIBUTE)}")
    return conversation


def is_conversation_node(node: Any) -> bool:
    return node is not None and node.IsA("vtkMRMLTextNode") and bool(node.GetAttribute(ATTRIBUTE))


def conversation_nodes(scene: Any, volume_node: Any | None = None) -> list[Any]:
    """Conversation text nodes in the scene (of one volume, when given), oldest first."""
    nodes = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLTextNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLTextNode")
        if not is_conversation_node(node):
            continue
        if volume_node is not None and node.GetNodeReferenceID(ROLE_VOLUME) != volume_node.GetID():
            continue
        nodes.append(node)
    return nodes


def find(scene: Any, conversation_id: str) -> Any | None:
    for node in conversation_nodes(scene):
        if node.GetAttribute(ATTRIBUTE) == conversation_id:
            return node
    return None


def volume_node(node: Any) -> Any | None:
    return node.GetNodeReference(ROLE_VOLUME)


def segmentation_node(node: Any) -> Any | None:
    return node.GetNodeReference(ROLE_SEGMENTATION)


def set_segmentation_node(node: Any, segmentation: Any) -> None:
    node.SetNodeReferenceID(ROLE_SEGMENTATION, segmentation.GetID())
