"""The sample image and the questions every benchmark suite asks about it.

All questions are about the MNI152 T1 template that ships in the ``nilearn`` wheel
(``sample:brain-mri``). Standard library only, so that a suite's parent process can
name them without importing torch.
"""

from __future__ import annotations

SAMPLE = "brain-mri"
SLICE_INDEX = 90
#: volume workloads take consecutive axial slices centred here (64 slices: 62..125)
VOLUME_CENTER = 94
QUESTION = "Which tissue forms the deep, myelinated part of the cerebral hemispheres? Segment it."
FOLLOW_UPS = (
    "Now describe only its boundary with the grey matter.",
    "Is it larger on the left or on the right side?",
    "How would it look on a T2-weighted image?",
    "Summarise your findings in one sentence.",
)
VOLUME_QUESTION = "Segment the white matter in the whole scan."
#: the untimed first question of the engine suite's workloads
WARMUP_QUESTION = "Describe what this MRI slice shows."
