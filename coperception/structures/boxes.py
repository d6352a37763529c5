"""Boxes that know their frame: a small typed container (detectron2's ``Boxes`` idea).

A bare ``(N, 7)`` array says nothing about the frame its boxes are in; mixing an agent's own
detections with the ego's is a silent, plausible-looking bug. :class:`Boxes3D` carries the frame
name with the boxes, refuses to be combined with boxes of another frame, and moves between
frames only through an explicit transform that names the target frame. Inside a stage plain
arrays are fine; this is the type for the seams. Frame names: ``"world"``, ``"ego"`` or
``"agent:<id>"`` (an agent's own LiDAR frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from coperception.errors import BoxError
from coperception.geometry.boxes import transform_boxes


@dataclass(frozen=True)
class Boxes3D:
    """boxes: (N, 7) float64 ``[x, y, z, l, w, h, yaw]`` (metres, radians) in ``frame``."""

    boxes: np.ndarray
    frame: str

    def __post_init__(self) -> None:
        data = self.boxes.detach().cpu().numpy() if isinstance(self.boxes, torch.Tensor) else self.boxes
        arr = np.asarray(data, dtype=np.float64)
        if arr.size == 0:
            arr = arr.reshape(0, 7)
        if arr.ndim != 2 or arr.shape[1] != 7:
            raise BoxError(f"Boxes3D in frame {self.frame!r}: boxes must be (N, 7), got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise BoxError(f"Boxes3D in frame {self.frame!r}: boxes contain NaN or inf")
        if not self.frame:
            raise BoxError("Boxes3D needs a frame name")
        object.__setattr__(self, "boxes", arr)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index) -> "Boxes3D":
        return Boxes3D(self.boxes[index].reshape(-1, 7), self.frame)

    def numpy(self) -> np.ndarray:
        return self.boxes

    def torch(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(self.boxes, dtype=dtype, device=device)

    def transformed(self, target_from_source: np.ndarray, target: str) -> "Boxes3D":
        """The boxes in frame ``target``, given the (4, 4) transform from this frame to it."""
        return Boxes3D(transform_boxes(np.asarray(target_from_source, dtype=np.float64), self.boxes), target)

    def expect(self, frame: str) -> "Boxes3D":
        """Self, after checking the boxes are in ``frame`` (a clear error otherwise)."""
        if self.frame != frame:
            raise BoxError(f"expected boxes in frame {frame!r}, got boxes in frame {self.frame!r}")
        return self

    @staticmethod
    def cat(parts: list["Boxes3D"]) -> "Boxes3D":
        """One container of several in the same frame."""
        if not parts:
            raise BoxError("Boxes3D.cat needs at least one part")
        frames = {p.frame for p in parts}
        if len(frames) != 1:
            raise BoxError(f"cannot concatenate boxes of different frames: {sorted(frames)}")
        return Boxes3D(np.concatenate([p.boxes for p in parts]), parts[0].frame)
