"""Evaluation: AP@IoU under the OpenCOOD/HEAL protocol and files of saved boxes."""

from coperception.eval.ap import APEvaluator, APResult, ThresholdAP, voc_ap
from coperception.eval.boxes_io import FrameBoxes, evaluate_files, evaluate_frames, load_boxes, save_boxes

__all__ = [
    "APEvaluator",
    "APResult",
    "ThresholdAP",
    "voc_ap",
    "FrameBoxes",
    "evaluate_files",
    "evaluate_frames",
    "load_boxes",
    "save_boxes",
]
