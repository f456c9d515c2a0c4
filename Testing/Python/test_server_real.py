"""The engine server on the real pretrained parts (LiteMedSAM + SmolLM2) with a real
head MRI: the HTTP answer equals the in-process one, text and mask voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import force_seg
from medsegr.client import EngineClient
from medsegr.io.images import load_image
from medsegr.answers import Hints
from medsegr.cli.samples import sample_path
from server_harness import TOKEN, live_server

pytestmark = pytest.mark.real
#: a box hint around the head on axial slice 70 (i, j voxel indices): the untrained
#: base model's [SEG] prompt alone gives no mask, SAM's box prompt does
BOX = (15.0, 20.0, 100.0, 130.0)


def test_real_parts_round_trip_over_http(real_pipeline):
    image = load_image(sample_path("head-mri"))  # NIfTI (RAS) read into LPS: flipped axes
    question = "Which structure fills most of this slice? Segment it."
    with live_server(real_pipeline, token=TOKEN) as srv:
        client = EngineClient(srv.url, token=TOKEN, timeout=300)
        info = client.check_version()
        hashes = {part: info["model"]["base"][part].get("sha256") for part in ("llm", "vision")}
        assert hashes == {"llm": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                          "vision": "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"}
        sid = client.create_session(image.array, image.spacing, image.origin, image.direction,
                                    modality=image.modality)
        pieces: list[str] = []
        with force_seg(real_pipeline.model, {2}):
            remote = client.ask(sid, question, axis="axial", slice_index=70, max_new_tokens=8,
                                box=BOX, on_text=pieces.append)
        follow = client.ask(sid, "And its name?", axis="axial", slice_index=70, max_new_tokens=4)
        client.delete_session(sid)

    local = real_pipeline.new_session(image)
    with force_seg(real_pipeline.model, {2}):
        expected = local.ask(question, axis="axial", slice_index=70, max_new_tokens=8,
                             hints=Hints(box=BOX))
    assert "".join(pieces) == remote.raw_text == expected.raw_text
    assert remote.encoded_slices == 1 and follow.encoded_slices == 0
    assert remote.axis == expected.axis and remote.slice_index == 70
    assert len(remote.segments) == len(expected.segments) == 1
    got, want = remote.segments[0].mask, expected.segments[0].mask
    assert got.shape == image.shape and got.any()
    assert np.array_equal(got, want)  # voxel for voxel, on the real image's own grid
