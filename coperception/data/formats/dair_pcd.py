"""DAIR-V2X point clouds: PCD v0.7 with the fields ``x y z intensity``.

DAIR-V2X ``velodyne/{id}.pcd`` files carry a named ``intensity`` field (0..255 in the released
data); HEAL/CoAlign read them with pypcd (``pc_data["intensity"] / 256``) and drop rows holding a
NaN. Reading goes through the shared PCD decoder (:func:`coperception.data.formats.pcd.read_pcd`,
which handles ascii, binary and binary_compressed bodies and named fields). Writing needs the DAIR
field layout, which the OPV2V-style writer there (``x y z rgb``) does not produce, hence the small
writer here. The intensity scale is the caller's business.
"""

from __future__ import annotations

import io
import os

import numpy as np

from coperception.data.formats.pcd import read_pcd


def read_dair_pcd(path: str) -> np.ndarray:
    """(P, 4) float32 ``x, y, z, intensity`` (raw file scale), rows with any NaN dropped.

    A missing file, a corrupt body or a cloud without an ``intensity`` field raises FormatError.
    """
    pts = read_pcd(path, intensity="field")
    return pts[~np.isnan(pts).any(axis=1)]


def write_dair_pcd(path: str, points: np.ndarray, data: str = "binary") -> None:
    """Write (P, 4) ``x, y, z, intensity`` as float32 fields; ``data`` is ``binary`` or ``ascii``."""
    if data not in ("binary", "ascii"):
        raise ValueError(f"data must be 'binary' or 'ascii', got {data!r}")
    pts = np.ascontiguousarray(np.asarray(points, dtype="<f4").reshape(-1, 4))
    n = len(pts)
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z intensity\n"
        "SIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
        f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {data}\n"
    ).encode("ascii")
    if data == "binary":
        body = pts.tobytes()
    else:  # %.9g restores the exact float32 value
        buf = io.BytesIO()
        np.savetxt(buf, pts.astype(np.float64), fmt="%.9g")
        body = buf.getvalue()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header + body)
    os.replace(tmp, path)
