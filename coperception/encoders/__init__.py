"""Per-agent sensor -> BEV encoders, chosen by name from :data:`ENCODERS`.

Every encoder subclasses :class:`~coperception.encoders.base.Encoder` (its name, input kind,
output channels and stride are declared there) and returns
:class:`~coperception.structures.bev.BEVFeatures`. Adding one: a new module and its class in the
tuple below.
"""

from coperception.encoders.backbone import BEVBackbone
from coperception.encoders.base import INPUT_KINDS, Encoder
from coperception.encoders.camera import CameraEncoder
from coperception.encoders.multimodal import MultiModalEncoder, MultiModalFeatures
from coperception.encoders.pointpillars import PillarFeatureNet, PointPillarsEncoder, scatter_to_bev
from coperception.encoders.second import SECONDEncoder
from coperception.encoders.sparse_conv import SparseConv3d, SparseTensor

#: Encoders by name (each class's ``name``).
ENCODERS: dict[str, type[Encoder]] = {cls.name: cls for cls in (
    PointPillarsEncoder, SECONDEncoder, CameraEncoder, MultiModalEncoder)}

__all__ = ["ENCODERS", "INPUT_KINDS", "BEVBackbone", "CameraEncoder", "Encoder", "MultiModalEncoder",
           "MultiModalFeatures", "PillarFeatureNet", "PointPillarsEncoder", "SECONDEncoder", "SparseConv3d",
           "SparseTensor", "scatter_to_bev"]
