"""Slice orientation, normalisation and the letterbox's exact inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsegr.errors import InputError
from medsegr.imaging.preprocess import letterbox, letterbox_geometry, normalise, unletterbox
from medsegr.imaging.slicing import resolve_axis, slice_view

IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
RAS_STORED = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)  # a typical NIfTI: i -> R, j -> A


def _phantom():
    vol = np.zeros((5, 6, 7), dtype=np.float32)  # (z, y, x)
    vol[2, 1, 5] = 1.0  # one marked voxel
    return vol


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_display_round_trip(axis):
    vol = np.random.default_rng(0).random((5, 6, 7))
    view = slice_view(vol.shape, (1.0, 2.0, 3.0), RAS_STORED, axis, 2)
    shown = view.extract(vol)
    back = view.to_volume(shown, vol.shape)
    sl = [slice(None)] * 3
    sl[axis] = 2
    np.testing.assert_array_equal(back[tuple(sl)], np.take(vol, 2, axis=axis))


def test_same_anatomy_same_picture_whatever_the_storage_order():
    """LPS-stored and RAS-stored copies of one volume give the same axial picture."""
    lps = np.random.default_rng(1).random((4, 6, 8))
    ras = lps[:, ::-1, ::-1]  # the same anatomy stored with i -> R, j -> A
    a = slice_view(lps.shape, (1, 1, 1), IDENTITY, 0, 1).extract(lps)
    b = slice_view(ras.shape, (1, 1, 1), RAS_STORED, 0, 1).extract(ras)
    np.testing.assert_array_equal(a, b)


def test_coronal_and_sagittal_have_superior_at_the_top():
    vol = np.zeros((5, 6, 7))
    vol[4] = 1.0  # top slice (k = 4) is the most superior in LPS with identity direction
    for axis in (1, 2):  # numpy 1 = j (coronal), 2 = i (sagittal)
        shown = slice_view(vol.shape, (1, 1, 1), IDENTITY, axis, 3).extract(vol)
        assert shown[0].all() and not shown[1:].any()


def test_axis_names_follow_the_direction_matrix():
    assert resolve_axis("axial", IDENTITY) == 0
    assert resolve_axis("coronal", IDENTITY) == 1
    assert resolve_axis("sagittal", IDENTITY) == 2
    # a volume stored sagittally: k runs along L-R
    sag = (0, 0, 1.0, 0, 1.0, 0, 1.0, 0, 0)
    assert resolve_axis("sagittal", sag) == 0
    assert resolve_axis("axial", sag) == 2
    with pytest.raises(InputError, match="unknown axis"):
        resolve_axis("diagonal", IDENTITY)
    with pytest.raises(InputError, match="out of range"):
        slice_view((5, 6, 7), (1, 1, 1), IDENTITY, 0, 5)


def test_anisotropic_slices_keep_physical_aspect():
    box = letterbox_geometry((20, 100), (4.0, 1.0), 256)  # 80 mm x 100 mm
    assert box.scaled_shape == (205, 256)
    box = letterbox_geometry((64, 64), (1.0, 1.0), 256)
    assert box.scaled_shape == (256, 256)


@pytest.mark.parametrize("shape,spacing", [((64, 32), (1.0, 1.0)), ((128, 128), (1.0, 1.0)),
                                           ((50, 70), (1.5, 0.7))])
def test_unletterbox_restores_the_slice_grid(shape, spacing):
    rng = np.random.default_rng(2)
    mask = np.zeros(shape, dtype=np.float32)
    r0, c0 = shape[0] // 4, shape[1] // 4
    mask[r0:r0 * 3, c0:c0 * 3] = 1
    box = letterbox_geometry(shape, spacing, 256)
    inp = letterbox(mask[None], box)
    assert inp.shape == (1, 1, 256, 256)
    assert float(inp[0, 0, box.scaled_shape[0]:].abs().sum()) == 0  # padding is zero
    logits = inp[:, 0] * 20 - 10  # a decoder that returns the input as logits
    back = unletterbox(logits, box)[0].numpy() > 0
    assert back.shape == shape
    agree = (back == (mask > 0)).mean()
    assert agree > 0.98, agree
    del rng


def test_box_corner_mapping_is_pixel_centre_aligned():
    box = letterbox_geometry((128, 64), (1.0, 1.0), 256)  # scale 2
    assert box.to_input_xy(0, 0) == (0.5, 0.5)
    assert box.to_input_xy(63, 127) == (126.5, 254.5)


def test_normalise_ct_window_and_mr_percentiles():
    ct = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    out = normalise(ct, "CT", "soft_tissue")
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    with pytest.raises(InputError, match="unknown CT window"):
        normalise(ct, "CT", "mediastinum-ish")
    mr = np.linspace(0, 1000, 1001)
    out = normalise(mr, "MR")
    assert out.min() == 0 and out.max() == 1 and 0.45 < out[500] < 0.55
    flat = normalise(np.full(10, 7.0), "MR")
    assert np.isfinite(flat).all()
    assert isinstance(torch.from_numpy(out), torch.Tensor)
