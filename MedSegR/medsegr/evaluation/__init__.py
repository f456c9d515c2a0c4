"""Evaluating MedSegR on a dataset split: masks (Dice, IoU, gIoU, cIoU) and text."""
