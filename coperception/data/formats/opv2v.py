"""OPV2V family on-disk format (OPV2V, V2XSet, OPV2V-H): read and write.

Paper: Xu et al., "OPV2V: An Open Benchmark Dataset and Fusion Pipeline for Perception with
Vehicle-to-Vehicle Communication" (ICRA 2022); V2XSet from "V2X-ViT" (ECCV 2022); OPV2V-H from
Lu et al., "An Extensible Framework for Open Heterogeneous Collaborative Perception" (HEAL, ICLR 2024).

The pieces live in :mod:`.opv2v_read` (:class:`OPV2VReader`), :mod:`.opv2v_write`
(:class:`OPV2VWriter`, :func:`write_frame`), :mod:`.opv2v_convert` (YAML schema and the
left-handed CARLA <-> right-handed library conversions) and :mod:`.pcd` (PCD files).
"""

from coperception.data.formats.opv2v_convert import (
    UE4_FROM_OPENCV,
    boxes_to_vehicles,
    camera_entry,
    lidar_from_camera_from_cords,
    parse_agent_params,
    parse_vehicles,
)
from coperception.data.formats.opv2v_read import OPV2VReader, order_agents
from coperception.data.formats.opv2v_write import OPV2VWriter, agent_yaml, write_frame

__all__ = [
    "UE4_FROM_OPENCV",
    "OPV2VReader",
    "OPV2VWriter",
    "agent_yaml",
    "boxes_to_vehicles",
    "camera_entry",
    "lidar_from_camera_from_cords",
    "order_agents",
    "parse_agent_params",
    "parse_vehicles",
    "write_frame",
]
