"""The parts of the MedSegR 3D Slicer module that do not need the Slicer GUI.

Each module owns one concern: volume geometry, the slice a view shows, segmentation
results, terminology, conversations in the scene, transcripts, settings, the bundled
engine process, the first-run install plan, background requests and the chat logic.
They work on any MRML scene (the running Slicer's, or one from the ``slicer-core``
wheel in tests), talk to the engine only through :mod:`medsegr.client`, and never
import torch, transformers, SimpleITK or Qt.
"""
