"""Detection heads over BEV maps: anchors, targets, losses, box coding, rotated NMS.

Heads are chosen by name from :data:`HEADS`; adding one is a new module and one entry here.
"""

from coperception.heads.anchors import AnchorSize, make_anchors
from coperception.heads.base import Head
from coperception.heads.detection_head import AnchorHead, HeadPredictions, PostProcess
from coperception.heads.losses import AnchorLoss
from coperception.heads.targets import AnchorTargets, TargetAssigner

#: Heads by name (each class's ``name``).
HEADS: dict[str, type[Head]] = {cls.name: cls for cls in (AnchorHead,)}

__all__ = ["HEADS", "AnchorHead", "Head", "AnchorLoss", "AnchorSize", "AnchorTargets", "HeadPredictions",
           "PostProcess", "TargetAssigner", "make_anchors"]
