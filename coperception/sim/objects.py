"""Road users' sizes, shapes and paint: what a LiDAR sees of a car, van, truck, bus, walker, bike.

Sizes follow common vehicle statistics (a passenger car is about 4.5 x 1.9 x 1.5 m with a
spread of a few decimetres; vans 5.2 x 2.0 x 2.2; trucks 8-10 m long, 2.5 m wide, 3.2 m high).
Each road user is drawn as two boxes inside its ground-truth box (body + cabin, cab + cargo,
torso + head, bike + rider) so that point clouds have the stepped silhouettes of real vehicles
and a gap under the body, while every hit still falls inside the labelled box.
"""

from __future__ import annotations

import numpy as np

from coperception.structures.records import OBJECT_CLASSES

CLASS_INDEX = {name: i for i, name in enumerate(OBJECT_CLASSES)}
PARTS_PER_OBJECT = 2

# (mean, std, min, max) of length, width, height per class (m); trucks/buses use uniform length.
_SIZE = {
    "car": ((4.5, 0.3, 3.7, 5.3), (1.85, 0.08, 1.6, 2.05), (1.5, 0.08, 1.3, 1.75)),
    "van": ((5.2, 0.25, 4.7, 5.9), (2.0, 0.06, 1.9, 2.15), (2.2, 0.15, 1.9, 2.6)),
    "truck": ((9.0, 0.0, 8.0, 10.0), (2.5, 0.04, 2.4, 2.6), (3.2, 0.2, 2.8, 3.7)),
    "bus": ((11.3, 0.0, 10.5, 12.0), (2.55, 0.03, 2.5, 2.6), (3.1, 0.1, 2.9, 3.3)),
    "pedestrian": ((0.5, 0.05, 0.4, 0.65), (0.6, 0.05, 0.5, 0.75), (1.72, 0.08, 1.5, 1.95)),
    "cyclist": ((1.75, 0.08, 1.6, 1.9), (0.6, 0.05, 0.5, 0.75), (1.7, 0.07, 1.5, 1.9)),
}

# Two parts per class as fractions of (l, w, h): centre offset along the heading, length,
# width, bottom and top heights.
_PARTS = np.zeros((len(OBJECT_CLASSES), PARTS_PER_OBJECT, 5))
_PARTS[CLASS_INDEX["car"]] = [[0.0, 1.0, 1.0, 0.12, 0.6], [-0.05, 0.55, 0.92, 0.6, 1.0]]
_PARTS[CLASS_INDEX["van"]] = [[0.0, 1.0, 1.0, 0.1, 0.55], [-0.08, 0.84, 1.0, 0.55, 1.0]]
_PARTS[CLASS_INDEX["truck"]] = [[0.38, 0.24, 1.0, 0.1, 0.85], [-0.12, 0.76, 1.0, 0.1, 1.0]]
_PARTS[CLASS_INDEX["bus"]] = [[0.0, 1.0, 1.0, 0.08, 0.5], [0.0, 1.0, 1.0, 0.5, 1.0]]
_PARTS[CLASS_INDEX["pedestrian"]] = [[0.0, 0.7, 0.8, 0.0, 0.86], [0.0, 0.45, 0.4, 0.86, 1.0]]
_PARTS[CLASS_INDEX["cyclist"]] = [[0.0, 1.0, 0.35, 0.05, 0.55], [-0.05, 0.35, 1.0, 0.55, 1.0]]

_PAINT = np.array([[200, 200, 205], [30, 30, 35], [150, 20, 25], [25, 60, 140], [120, 120, 125],
                   [235, 235, 230], [40, 90, 50], [200, 150, 40]], dtype=np.uint8)
_PAINT_REFLECTIVITY = np.array([0.75, 0.2, 0.5, 0.45, 0.55, 0.85, 0.4, 0.6])


def sample_sizes(classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N,) class indices -> (N, 3) ``l, w, h`` in metres drawn from the class statistics."""
    classes = np.asarray(classes, dtype=np.int64)
    stats = np.array([_SIZE[name] for name in OBJECT_CLASSES])  # (C, 3, 4)
    s = stats[classes]
    normal = s[..., 0] + s[..., 1] * rng.standard_normal((len(classes), 3))
    uniform = s[..., 2] + (s[..., 3] - s[..., 2]) * rng.random((len(classes), 3))
    draw = np.where(s[..., 1] > 0, normal, uniform)
    return np.clip(draw, s[..., 2], s[..., 3])


def sample_paint(n: int, classes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Colours (N, 3) uint8 and LiDAR reflectivity (N,) in [0, 1] for ``n`` objects."""
    k = rng.integers(0, len(_PAINT), n)
    color, refl = _PAINT[k].copy(), _PAINT_REFLECTIVITY[k].copy()
    people = np.isin(np.asarray(classes), [CLASS_INDEX["pedestrian"], CLASS_INDEX["cyclist"]])
    refl[people] = 0.35  # clothing
    return color, refl


def part_boxes(boxes: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shape boxes of road users standing on the ground.

    boxes: (N, 7) ground-truth ``[x, y, z, l, w, h, yaw]``; returns centres (N*2, 3), sizes (N*2, 3)
    and yaws (N*2,), parts of object n at rows ``2n, 2n+1``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    p = _PARTS[np.asarray(classes, dtype=np.int64)]  # (N, 2, 5)
    l, w, h, yaw = boxes[:, 3:4], boxes[:, 4:5], boxes[:, 5:6], boxes[:, 6:7]
    bottom = boxes[:, 2:3] - h / 2
    off = p[..., 0] * l
    cx = boxes[:, 0:1] + off * np.cos(yaw)
    cy = boxes[:, 1:2] + off * np.sin(yaw)
    cz = bottom + 0.5 * (p[..., 3] + p[..., 4]) * h
    sizes = np.stack([p[..., 1] * l, p[..., 2] * w, (p[..., 4] - p[..., 3]) * h], -1)
    centres = np.stack([cx, cy, cz], -1)
    return centres.reshape(-1, 3), sizes.reshape(-1, 3), np.repeat(yaw[:, 0], PARTS_PER_OBJECT)
