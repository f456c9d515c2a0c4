"""Self-test in 3D Slicer: the slice MedSegR sends is the slice each real slice view shows.

Slicer's own slice logic says which voxel slice of a volume a view shows
(``GetSliceIndexFromOffset``, 1-based); MedSegR's ``slice_selection`` must agree in the
Red, Yellow and Green views at several offsets. Every offset of every view is checked:
on MRHead none of them is oblique or off the volume, so one that is fails the test
rather than being skipped.
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
        views = ("Red", "Yellow", "Green")
        steps = (-20.0, 0.0, 13.0)
        checked = {view: 0 for view in views}
        for view in views:
            logic = layout.sliceWidget(view).sliceLogic()
            node = logic.GetSliceNode()
            centre = logic.GetSliceOffset()
            for step in steps:
                where = f"{view} view at offset {step:+}"
                logic.SetSliceOffset(centre + step)
                slicer.app.processEvents()
                expected = logic.GetSliceIndexFromOffset(logic.GetSliceOffset(), volume)
                self.assertGreater(expected, 0, f"{where}: Slicer finds no voxel slice of "
                                   "the volume (oblique view, or off the volume)")
                selection = slice_selection(volume, node)
                self.assertFalse(selection.oblique, where)
                self.assertEqual(selection.index, expected - 1, where)
                checked[view] += 1
        self.assertEqual(checked, {view: len(steps) for view in views})
