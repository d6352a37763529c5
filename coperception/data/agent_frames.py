"""The frame a collaborator's cloud is encoded in (``CooperativeDataset(agent_frame=...)``,
``data.agent_frame``; intermediate and late fusion):

* ``"own"``: its own LiDAR frame (the map is warped by the full SE(2) pose at fusion).
* ``"ego_heading"``: its own origin, the ego's axes -- the cloud is turned by the announced
  relative yaw before encoding, so the warp at fusion is a pure translation. A learned BEV
  feature is not rotation-equivariant: the offsets and heading its channels encode are in the
  frame it was computed in, and warping a map by a 90 degree yaw moves its cells but not what
  its channels mean, so a head in the ego frame decodes boxes rotated by the relative yaw (high
  AP@0.3, poor AP@0.7). Turning the points first removes that mismatch and keeps each agent's
  own range around itself (measured in models/README.md).
* ``"ego"``: OpenCOOD's ``proj_first``: the cloud is moved into the ego frame and cropped to the
  ego's range, and ``ego_from_agent`` becomes the (noise-only) residual.

The change of frame uses the *announced* (noisy) relative pose, as a real sender would;
``ego_from_agent`` / ``ego_from_agent_clean``, each agent's own ground truth and camera extrinsics
move with the cloud. Early fusion has one ego-frame cloud and ignores it.
"""

from __future__ import annotations

import numpy as np
import torch

from coperception.structures.records import ObjectSet
from coperception.geometry.boxes import transform_boxes

#: Frames a collaborator's cloud can be encoded in.
AGENT_FRAMES = ("own", "ego_heading", "ego")
#: the one default, for the dataset and the experiment config alike.
DEFAULT_AGENT_FRAME = "ego_heading"


def move_points(points: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """(P, 4) points through a (4, 4) transform, in float32."""
    m = torch.as_tensor(matrix, dtype=torch.float32)
    return torch.cat([points[:, :3] @ m[:3, :3].T + m[:3, 3], points[:, 3:]], dim=1)


def frame_change(agent_frame: str, ego_from_agent: np.ndarray) -> np.ndarray:
    """(A, 4, 4) ``encoded_from_own`` for announced ``ego_from_agent`` (A, 4, 4): the transform
    that takes each agent's own LiDAR frame to the frame its cloud is encoded in (identity for
    the ego and for ``"own"``)."""
    out = np.tile(np.eye(4), (len(ego_from_agent), 1, 1))
    if agent_frame == "ego":
        out[1:] = ego_from_agent[1:]
    elif agent_frame == "ego_heading":
        yaw = np.arctan2(ego_from_agent[1:, 1, 0], ego_from_agent[1:, 0, 0])
        c, s = np.cos(yaw), np.sin(yaw)
        out[1:, 0, 0], out[1:, 0, 1], out[1:, 1, 0], out[1:, 1, 1] = c, -s, s, c
    return out


def reframe(agent_frame: str, clouds: list[torch.Tensor], cams, agent_gt: list[ObjectSet] | None,
            clean: np.ndarray, noisy: np.ndarray):
    """Move every collaborator's cloud, its own ground truth, its camera extrinsics and the
    ``ego_from_agent`` transforms (clean and announced) into the frame of ``agent_frame``; the
    change uses the announced (noisy) pose, as a real sender would."""
    change = frame_change(agent_frame, noisy)
    back = np.linalg.inv(change)
    clouds = [c if k == 0 else move_points(c, change[k]) for k, c in enumerate(clouds)]
    if agent_gt is not None:
        agent_gt = [g if k == 0 else ObjectSet(transform_boxes(change[k], g.boxes), g.ids, g.classes, g.speeds)
                    for k, g in enumerate(agent_gt)]
    cams = cams.augmented(change) if cams is not None else None
    return clouds, cams, agent_gt, clean @ back, noisy @ back
