"""Data: typed records, on-disk formats (OPV2V family, DAIR-V2X-C), dataset and collate."""

from coperception.data.records import (
    OBJECT_CLASSES,
    VEHICLE_CLASSES,
    AgentKind,
    AgentObservation,
    Camera,
    Detections,
    Frame,
    ObjectSet,
)

__all__ = [
    "OBJECT_CLASSES",
    "VEHICLE_CLASSES",
    "AgentKind",
    "AgentObservation",
    "Camera",
    "Detections",
    "Frame",
    "ObjectSet",
]
