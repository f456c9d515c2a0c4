"""What the engine measures on a mask (medsegr.imaging.measurements): size, patient side
from the image direction, intensity, connected pieces and extent, against values worked
out by hand on small images with known geometry."""

from __future__ import annotations

import numpy as np
import pytest

from medsegr.answers import Answer, Measurement, Segment
from medsegr.imaging.measurements import measure_segment, patient_side
from medsegr.io.images import MedicalImage

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
#: the x index axis points to the patient's right (LPS -x)
X_FLIPPED = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def ct_body(direction: tuple[float, ...] = IDENTITY, modality: str = "CT") -> MedicalImage:
    """3 axial slices of 100 x 100, 0.5 mm pixels, 2 mm slices: air with a round body of
    40 HU (radius 40 px) centred in the image."""
    array = np.full((3, 100, 100), -1000.0, dtype=np.float32)
    yy, xx = np.mgrid[:100, :100]
    array[:, (yy - 49.5) ** 2 + (xx - 49.5) ** 2 <= 40 ** 2] = 40.0
    return MedicalImage(array=array, spacing=(0.5, 0.5, 2.0), origin=(0.0, 0.0, 0.0),
                        direction=direction, modality=modality, source="<array>", is_2d=False)


def square(shape: tuple[int, int, int], z: int, y0: int, x0: int, size: int = 10) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[z, y0:y0 + size, x0:x0 + size] = True
    return mask


def test_a_slice_mask_has_its_area_side_intensity_pieces_and_in_plane_extent():
    image = ct_body()
    image.array[1, 45:55, 70:80] = np.array([60.0, 80.0] * 50, dtype=np.float32).reshape(10, 10)
    m = measure_segment(image, square(image.shape, 1, 45, 70), volume=False, axis=0)
    assert m.mode == "slice" and m.voxels == 100 and m.volume_ml is None
    assert m.area_cm2 == pytest.approx(100 * 0.25 / 100)  # 100 pixels of 0.25 mm²
    assert m.side == "left"  # +x index = LPS +x = the patient's left
    assert m.intensity_mean == pytest.approx(70.0) and m.intensity_sd == pytest.approx(10.0)
    assert m.intensity_unit == "HU" and m.components == 1
    # axial: right-left and anterior-posterior, 10 pixels of 0.5 mm each; no S-I
    assert m.extent_mm == {"right-left": 5.0, "anterior-posterior": 5.0}


def test_the_side_follows_the_image_direction_not_the_array():
    image = ct_body(X_FLIPPED)
    mask = square(image.shape, 1, 45, 70)
    assert measure_segment(image, mask, volume=False, axis=0).side == "right"
    assert measure_segment(ct_body(), np.flip(mask, 2).copy(), volume=False, axis=0).side == "right"


def test_midline_both_sides_and_no_orientation():
    image = ct_body()
    centre = square(image.shape, 1, 45, 47, size=6)  # centroid on the body's midline
    assert patient_side(image, centre) == "midline"
    wide = np.zeros(image.shape, dtype=bool)
    wide[1, 40:60, 15:85] = True  # across the midline, far to both sides
    assert patient_side(image, wide) == "both"
    assert measure_segment(ct_body(modality="OT"), square(image.shape, 1, 45, 70),
                           volume=False, axis=0).side is None


def test_a_volume_mask_has_its_volume_pieces_and_three_extents():
    image = ct_body()
    mask = np.zeros(image.shape, dtype=bool)
    mask[0:3, 20:30, 20:30] = True  # 300 voxels, one piece over 3 slices
    mask[1, 60:64, 60:64] = True  # a second piece
    m = measure_segment(image, mask, volume=True, axis=0)
    assert m.mode == "volume" and m.area_cm2 is None
    assert m.voxels == 316 and m.volume_ml == pytest.approx(316 * 0.5 * 0.5 * 2.0 / 1000, abs=0.005)
    assert m.components == 2
    assert m.extent_mm == {"right-left": 22.0, "anterior-posterior": 22.0, "inferior-superior": 6.0}


def test_a_coronal_slice_leaves_out_the_anterior_posterior_extent():
    image = ct_body()
    mask = np.zeros(image.shape, dtype=bool)
    mask[0:2, 50, 30:40] = True
    m = measure_segment(image, mask, volume=False, axis=1)
    assert set(m.extent_mm) == {"right-left", "inferior-superior"}
    assert m.area_cm2 == pytest.approx(20 * 0.5 * 2.0 / 100)  # x spacing 0.5 mm, z 2 mm


def test_an_empty_mask_and_a_wrong_shape():
    image = ct_body()
    m = measure_segment(image, np.zeros(image.shape, dtype=bool), volume=False, axis=0)
    assert m.voxels == 0 and m.components == 0 and m.side is None and m.extent_mm == {}
    with pytest.raises(ValueError, match="shape"):
        measure_segment(image, np.zeros((3, 10, 10), dtype=bool), volume=False, axis=0)


def test_a_measurement_goes_through_json_and_reads_as_one_line():
    image = ct_body()
    m = measure_segment(image, square(image.shape, 1, 45, 70), volume=False, axis=0)
    assert Measurement.from_dict(m.to_dict()) == m
    text = m.describe()
    assert text.startswith("0.25 cm², patient's left, 40 ± 0 HU, 1 piece, 5 × 5 mm")
    answer = Answer(text="t", raw_text="t", segments=[Segment("x", square(image.shape, 1, 45, 70), 0,
                                                              measured=m)],
                    mode="slice", axis=0, slice_index=1)
    assert answer.summary()["segments"][0]["measured"] == m.to_dict()
