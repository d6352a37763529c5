"""Per-agent sensor -> BEV encoders, chosen by name from :data:`ENCODERS`.

Every encoder returns :class:`~coperception.encoders.base.BEVFeatures`. Adding one: a new module
and one entry here.
"""

from coperception.encoders.backbone import BEVBackbone
from coperception.encoders.base import BEVFeatures
from coperception.encoders.camera import CameraBatch, CameraEncoder, camera_batch
from coperception.encoders.multimodal import MultiModalEncoder, MultiModalFeatures
from coperception.encoders.pointpillars import PillarFeatureNet, PointPillarsEncoder, scatter_to_bev
from coperception.encoders.second import SECONDEncoder
from coperception.encoders.sparse_conv import SparseConv3d, SparseTensor

ENCODERS: dict[str, type] = {
    "pointpillars": PointPillarsEncoder,
    "second": SECONDEncoder,
    "camera": CameraEncoder,
    "multimodal": MultiModalEncoder,
}

__all__ = ["ENCODERS", "BEVBackbone", "BEVFeatures", "CameraBatch", "CameraEncoder", "MultiModalEncoder",
           "MultiModalFeatures", "PillarFeatureNet",
           "PointPillarsEncoder", "SECONDEncoder", "SparseConv3d", "SparseTensor", "camera_batch", "scatter_to_bev"]
