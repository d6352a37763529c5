"""DAIR-V2X-C (cooperative vehicle-infrastructure) format: read AND write.

DAIR-V2X (Yu et al., "DAIR-V2X: A Large-Scale Dataset for Vehicle-Infrastructure Cooperative 3D
Object Detection", CVPR 2022) pairs one vehicle with one road-side unit per frame. The tree, as
read by the DAIR-V2X tools and by HEAL/CoAlign::

    <root>/cooperative/data_info.json, label_world/{veh_id}.json  (+ label_world_backup/ for HEAL)
    <root>/vehicle-side/{velodyne/{id}.pcd, image/{id}.jpg, data_info.json,
        calib/{lidar_to_novatel,novatel_to_world,lidar_to_camera,camera_intrinsic}/{id}.json,
        label/{lidar,camera,lidar_backup}/{id}.json}
    <root>/infrastructure-side/{velodyne, image, data_info.json,
        calib/{virtuallidar_to_world,virtuallidar_to_camera,camera_intrinsic}/{id}.json,
        label/{virtuallidar,camera}/{id}.json}
    <root>/train.json, val.json   (lists of vehicle frame ids)

DAIR frames are right-handed like the library, so only the pose chain, the label layouts and the
intensity scale (0..256 on disk, 0..1 here) are converted. The pieces live in
:mod:`.dair_calib` (calibration JSON and poses), :mod:`.dair_labels` (types, corner order,
labels), :mod:`.dair_pcd` (PCD with an ``intensity`` field), :mod:`.dair_read` and
:mod:`.dair_write`; this module is the public entry point.
"""

from coperception.data.formats.dair_read import INFRA_ID, VEHICLE_ID, DairV2XReader
from coperception.data.formats.dair_write import DairV2XWriter, write_frame

__all__ = ["DairV2XReader", "DairV2XWriter", "write_frame", "VEHICLE_ID", "INFRA_ID"]
