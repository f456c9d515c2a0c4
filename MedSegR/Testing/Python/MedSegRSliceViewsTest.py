"""Self-test in 3D Slicer: the slice MedSegR sends is the slice each real slice view shows.

Slicer's own slice logic says which voxel slice of a volume a view shows
(``GetSliceIndexFromOffset``, 1-based); MedSegR's ``slice_selection`` must agree in the
Red, Yellow and Green views at several offsets.
"""

import unittest

import slicer

from MedSegRLib.current_slice import slice_selection


class MedSegRSliceViewsTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_slice_of_each_view_matches_slicers_own_index()

    def test_slice_of_each_view_matches_slicers_own_index(self):
        import SampleData

        volume = SampleData.downloadSample("MRHead")
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        layout = slicer.app.layoutManager()
        for view in ("Red", "Yellow", "Green"):
            logic = layout.sliceWidget(view).sliceLogic()
            node = logic.GetSliceNode()
            centre = logic.GetSliceOffset()
            for step in (-20.0, 0.0, 13.0):
                logic.SetSliceOffset(centre + step)
                slicer.app.processEvents()
                expected = logic.GetSliceIndexFromOffset(logic.GetSliceOffset(), volume)
                if expected <= 0:
                    continue  # the view is oblique to the volume or off it
                selection = slice_selection(volume, node)
                self.assertEqual(selection.index, expected - 1, f"{view} view at offset {step:+}")
                self.assertFalse(selection.oblique)
