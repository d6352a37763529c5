"""Per-agent sensor -> BEV encoders, chosen by name from :data:`ENCODERS`.

Every encoder returns :class:`~coperception.encoders.base.BEVFeatures`. Adding one: a new module
and one entry here.
"""

from coperception.encoders.backbone import BEVBackbone
from coperception.encoders.base import BEVFeatures
from coperception.encoders.pointpillars import PillarFeatureNet, PointPillarsEncoder, scatter_to_bev

ENCODERS: dict[str, type] = {
    "pointpillars": PointPillarsEncoder,
}

__all__ = ["ENCODERS", "BEVBackbone", "BEVFeatures", "PillarFeatureNet", "PointPillarsEncoder", "scatter_to_bev"]
