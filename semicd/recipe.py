"""The official UniMatch V2 remote-sensing recipe, as plain values: the change-detection task's defaults and the
datasets' fallbacks both read them from here.

Crop 252 px (18 × 18 DINOv2 tokens), batch 8 on one GPU, both sides of a tile rescaled by U(0.8, 1.2) (the
official code's ratio for change detection, narrower than segmentation's 0.5-2.0: tiles are already at the
sensor's scale), no grayscale in the strong views (colour is the signal of change), pseudo-labels from the online
student, evaluation on the test list, and 3000 labeled crops per epoch for the supervised baseline.
"""

from __future__ import annotations

CHANGE_CLASSES = ("unchanged", "changed")
CROP_SIZE = 252
BATCH_SIZE = 8
RATIO_RANGE = (0.8, 1.2)
GRAYSCALE_P = 0.0
TEACHER = "student"
EVAL_LIST = "test"
SUPERVISED_NSAMPLE = 3000
