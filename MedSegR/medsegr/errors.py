"""Exceptions raised by the MedSegR engine.

Every error a user can cause (bad file, bad question, bad weights) is a
:class:`MedSegRError` subclass with a one-line, specific message. The CLI turns
them into exit code 2; the server (later) into a 4xx JSON error.
"""

from __future__ import annotations


class MedSegRError(Exception):
    """Base class of all errors the engine reports to a user."""

    #: short machine-readable code, used in JSON error bodies
    code: str = "medsegr_error"


class InputError(MedSegRError):
    """The image, question or request parameters are not usable."""

    code = "bad_input"


class WeightError(MedSegRError):
    """A weight file or weight package is missing, corrupt or of the wrong version."""

    code = "bad_weights"


class ConfigError(MedSegRError):
    """A model configuration file is malformed or names unknown keys."""

    code = "bad_config"


class CheckpointError(MedSegRError):
    """A fine-tuned checkpoint does not fit the base model it is loaded onto."""

    code = "bad_checkpoint"
