"""The records every stage shares: frames and observations, samples and batches, voxel cells,
BEV feature maps, the camera part of a batch, detections and frame-aware boxes.

This package sits just above :mod:`coperception.geometry`: data, encoders, heads, fusion, comm
and the closed loop import their shared types from here, never from each other.
"""

from coperception.structures.batch import CooperativeBatch
from coperception.structures.bev import BEVFeatures
from coperception.structures.boxes import Boxes3D
from coperception.structures.camera import IMAGE_MEAN, IMAGE_STD, CameraBatch, CameraSample, camera_batch
from coperception.structures.cells import Pillars, Voxels
from coperception.structures.records import (
                                             OBJECT_CLASSES,
                                             VEHICLE_CLASSES,
                                             AgentKind,
                                             AgentObservation,
                                             Camera,
                                             Detections,
                                             Frame,
                                             ObjectSet,
)
from coperception.structures.sample import CooperativeSample, Targets

__all__ = ["IMAGE_MEAN", "IMAGE_STD", "OBJECT_CLASSES", "VEHICLE_CLASSES", "AgentKind", "AgentObservation",
           "BEVFeatures", "Boxes3D", "Camera", "CameraBatch", "CameraSample", "CooperativeBatch", "CooperativeSample",
           "Detections", "Frame", "ObjectSet", "Pillars", "Targets", "Voxels", "camera_batch"]
