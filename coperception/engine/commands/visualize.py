"""``coperception viz``: a BEV picture of one frame (every agent's points, GT, optional detections).

Without ``--checkpoint`` it renders the dataset itself (occlusion shows: each agent's points in
its own colour, GT boxes green, agents as circles). With one, the detector's predictions for the
chosen inference mode are drawn in red. ``--show`` also opens an Open3D window when a display
exists.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("viz", help="render a BEV picture of a frame (and detections)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="dataset root (default: the checkpoint's)")
    p.add_argument("--format", default="opv2v", choices=("opv2v", "dair-v2x"), help="dataset format")
    p.add_argument("--split", default="test", help="library split name")
    p.add_argument("--index", type=int, default=0, help="frame index in the split")
    p.add_argument("--checkpoint", type=Path, default=None, help="draw this detector's predictions")
    p.add_argument("--mode", default="intermediate", choices=("single", "late", "intermediate"))
    p.add_argument("--range", type=float, nargs=2, default=(60.0, 60.0), metavar=("X", "Y"),
                   help="half extent of the picture in metres (without a checkpoint)")
    p.add_argument("--resolution", type=float, default=0.1, help="metres per pixel")
    p.add_argument("--out", type=Path, default=Path("outputs/bev.png"))
    p.add_argument("--show", action="store_true", help="also open an Open3D viewer (needs a display)")
    p.set_defaults(func=run_viz)


def _frame_picture(args):
    """Render straight from a reader: no model, every agent, objects in the ego frame."""
    import numpy as np

    from coperception.data.formats import open_reader
    from coperception.geometry.boxes import transform_boxes
    from coperception.geometry.pose import relative_transform, transform_points
    from coperception.viz.bev import View, render_bev

    reader = open_reader(args.format, args.data, args.split)
    keys = reader.keys()
    if not 0 <= args.index < len(keys):
        from coperception.errors import ConfigError
        raise ConfigError(f"--index {args.index}: split {args.split!r} of {args.data} has {len(keys)} frames")
    frame = reader.read(keys[args.index])
    ego = frame.ego.world_from_lidar
    tf = [relative_transform(o.world_from_lidar, ego) for o in frame.observations.values()]
    points = [transform_points(m, o.points) for m, o in zip(tf, frame.observations.values())]
    gt = transform_boxes(np.linalg.inv(ego), frame.objects.boxes)
    view = View((-args.range[0], args.range[0]), (-args.range[1], args.range[1]), args.resolution)
    image = render_bev(points, gt_boxes=gt, agent_xy=np.stack([m[:2, 3] for m in tf]), view=view)
    return image, points


def run_viz(args: argparse.Namespace) -> int:
    from coperception.viz.bev import save_png

    if args.checkpoint is not None:
        from coperception.engine.experiment import load_detector
        from coperception.engine.render import render_example_at

        cfg, model = load_detector(args.checkpoint, "cpu", data_root=str(args.data) if args.data else None)
        path = render_example_at(cfg, model, args.out, split=args.split, index=args.index, mode=args.mode,
                                 resolution=args.resolution)
        print(f"wrote {path}")
        return 0
    if args.data is None:
        from coperception.errors import ConfigError
        raise ConfigError("viz needs --data (or --checkpoint)")
    image, points = _frame_picture(args)
    print(f"wrote {save_png(image, args.out)}")
    if args.show:
        from coperception.viz.viewer import show_points
        show_points(points)
    return 0
