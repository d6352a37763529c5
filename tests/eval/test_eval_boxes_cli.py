"""Saved-boxes files and the ``eval-boxes`` subcommand (driven through argparse, as cli.py does)."""

import argparse
import json

import numpy as np
import pytest

from coperception.engine.commands import evaluate as commands
from coperception.errors import ConfigError, FormatError
from coperception.eval.ap import APEvaluator
from coperception.eval.boxes_io import FrameBoxes, evaluate_frames, load_boxes, save_boxes
from coperception.geometry.boxes import boxes_to_corners


def _frames(seed=0, n=6):
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for i in range(n):
        k = int(rng.integers(0, 5))
        gt = np.column_stack([rng.uniform(-20, 20, (k, 2)), np.full(k, -1.0), np.full(k, 4.0), np.full(k, 2.0),
                              np.full(k, 1.5), rng.uniform(-3, 3, k)])
        det = gt + np.column_stack([rng.normal(0, 0.4, (k, 2)), np.zeros((k, 4)), rng.normal(0, 0.1, k)])
        det = np.concatenate([det, [[30.0, 30.0, -1.0, 4.0, 2.0, 1.5, 0.0]]])
        gts.append(FrameBoxes(f"scene/{i:06d}", gt))
        if i != 2:  # frame 2 has no detection entry at all
            dets.append(FrameBoxes(f"scene/{i:06d}", det, rng.random(len(det))))
    return dets, gts


def _run(argv):
    parser = argparse.ArgumentParser(prog="coperception")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _expected(dets, gts, global_sort):
    ev = APEvaluator()
    by_id = {d.frame_id: d for d in dets}
    for g in gts:
        d = by_id.get(g.frame_id)
        ev.add_frame(None if d is None else d.boxes, None if d is None else d.scores, g.boxes)
    return ev.result(global_sort=global_sort)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_round_trip(tmp_path, suffix):
    dets, gts = _frames()
    save_boxes(tmp_path / f"d{suffix}", dets, "detections")
    save_boxes(tmp_path / f"g{suffix}", gts, "ground_truth")
    cases = ((tmp_path / f"d{suffix}", dets, "detections"), (tmp_path / f"g{suffix}", gts, "ground_truth"))
    for path, frames, kind in cases:
        back = load_boxes(path, kind)
        assert [f.frame_id for f in back] == [f.frame_id for f in frames]
        for a, b in zip(back, frames):
            np.testing.assert_array_equal(a.boxes.reshape(-1, 7), b.boxes.reshape(-1, 7))
            if kind == "detections":
                np.testing.assert_array_equal(a.scores, b.scores)
            else:
                assert a.scores is None


def test_corners_round_trip(tmp_path):
    dets, _ = _frames()
    corner_frames = [FrameBoxes(f.frame_id, boxes_to_corners(f.boxes), f.scores) for f in dets]
    for suffix in (".npz", ".json"):
        save_boxes(tmp_path / f"c{suffix}", corner_frames, "detections")
        back = load_boxes(tmp_path / f"c{suffix}")
        np.testing.assert_allclose(back[0].boxes, corner_frames[0].boxes)
        assert back[0].boxes.shape[1:] == (8, 3)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
@pytest.mark.parametrize("global_sort", [True, False])
def test_eval_boxes_command(tmp_path, capsys, suffix, global_sort):
    dets, gts = _frames(seed=1)
    save_boxes(tmp_path / f"d{suffix}", dets, "detections")
    save_boxes(tmp_path / f"g{suffix}", gts, "ground_truth")
    out = tmp_path / "res" / "ap.json"
    argv = ["eval-boxes", "--detections", str(tmp_path / f"d{suffix}"), "--gt", str(tmp_path / f"g{suffix}"),
            "--json", str(out)] + ([] if global_sort else ["--no-global-sort"])
    assert _run(argv) == 0
    printed = capsys.readouterr().out
    assert ("global sort" in printed) == global_sort and ("per-frame" in printed) != global_sort
    doc = json.loads(out.read_text())
    expected = _expected(dets, gts, global_sort)
    assert doc["global_sort"] is global_sort and doc["variant"] == ("global_sort" if global_sort else "per_frame")
    assert doc["num_gt"] == sum(len(g.boxes) for g in gts) and doc["num_frames"] == len(gts)
    for t in (0.3, 0.5, 0.7):
        assert doc["iou"][f"{t:g}"]["ap"] == pytest.approx(expected.ap(t), abs=1e-12)
        assert f"{100 * expected.ap(t):.2f}" in printed


def test_eval_boxes_custom_thresholds(tmp_path, capsys):
    dets, gts = _frames(seed=2)
    save_boxes(tmp_path / "d.npz", dets, "detections")
    save_boxes(tmp_path / "g.json", gts, "ground_truth")
    out = tmp_path / "ap.json"
    assert _run(["eval-boxes", "--detections", str(tmp_path / "d.npz"), "--gt", str(tmp_path / "g.json"),
                 "--iou", "0.25", "0.6", "--json", str(out)]) == 0
    assert sorted(json.loads(out.read_text())["iou"]) == ["0.25", "0.6"]
    with pytest.raises(ConfigError, match="--iou"):
        _run(["eval-boxes", "--detections", str(tmp_path / "d.npz"), "--gt", str(tmp_path / "g.json"),
              "--iou", "1.5"])


def _json_doc(frames, kind="detections"):
    return {"format": "coperception.boxes", "version": 1, "kind": kind, "frames": frames}


BOX = [0, 0, -1, 4, 2, 1.5, 0.1]


@pytest.mark.parametrize("doc, match", [
    (_json_doc([{"frame_id": "a", "boxes": [BOX]}]), r"frame 'a': field 'scores' is missing"),
    (_json_doc([{"frame_id": "a", "boxes": [BOX], "scores": [0.5, 0.1]}]), r"frame 'a': field 'scores' has 2"),
    (_json_doc([{"frame_id": "a", "boxes": [BOX[:6]], "scores": [0.5]}]), r"frame 'a': field 'boxes'.*\(N, 7\)"),
    (_json_doc([{"frame_id": "b", "boxes": [BOX[:3] + [4, 0, 1, 0]], "scores": [0.5]}]),
     r"frame 'b': field 'boxes': .*row 0 .*non-positive"),
    (_json_doc([{"frame_id": "a", "boxes": [BOX], "scores": [0.5]}] * 2), r"frame 'a': field 'frame_id' appears twice"),
    (_json_doc([{"boxes": [BOX], "scores": [0.5]}]), r"frame #0: field 'frame_id'"),
    (_json_doc([{"frame_id": "a", "scores": []}]), r"frame 'a': needs exactly one of the fields"),
    (_json_doc([{"frame_id": "a", "boxes": [["x"] * 7], "scores": [0.5]}]), r"frame 'a': .*not numeric"),
    ({**_json_doc([]), "version": 7}, r"field 'version' 7"),
    ({**_json_doc([]), "format": "other"}, r"field 'format'"),
    ({**_json_doc([]), "kind": "ground_truth"}, r"field 'kind' is 'ground_truth', expected 'detections'"),
    ({"frames": 3}, r"field 'frames'"),
])
def test_json_errors_name_file_frame_and_field(tmp_path, doc, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc).replace("NaN", "null"))
    with pytest.raises(FormatError, match=match) as info:
        load_boxes(path, "detections")
    assert "bad.json" in str(info.value)


def test_json_nan_box_is_reported(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(_json_doc([{"frame_id": "f7", "boxes": [BOX[:6] + [float("nan")]], "scores": [1.0]}])))
    with pytest.raises(FormatError, match=r"nan.json: frame 'f7': field 'boxes': .*non-finite"):
        load_boxes(path)


def test_npz_errors(tmp_path):
    dets, _ = _frames()
    good = tmp_path / "d.npz"
    save_boxes(good, dets, "detections")
    data = dict(np.load(good))
    cases = {
        "scores": (lambda d: d.pop("scores"), r"field 'scores' is missing"),
        "counts": (lambda d: d.__setitem__("counts", d["counts"] + 1), r"field 'boxes' has .* rows, but 'counts'"),
        "shape": (lambda d: d.__setitem__("boxes", d["boxes"][:, :6]), r"field 'boxes' has shape"),
        "kind": (lambda d: d.__setitem__("kind", np.array("maybe")), r"field 'kind' must be one of"),
        "nan": (lambda d: d["boxes"].__setitem__((1, 3), np.nan), r"frame 'scene/000000': field 'boxes'"),
    }
    for name, (mutate, match) in cases.items():
        bad = {k: v.copy() for k, v in data.items()}
        mutate(bad)
        path = tmp_path / f"{name}.npz"
        np.savez(path, **bad)
        with pytest.raises(FormatError, match=match):
            load_boxes(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FormatError, match="junk.npz: not a readable"):
        load_boxes(tmp_path / "junk.npz")
    with pytest.raises(FormatError, match="no such file"):
        load_boxes(tmp_path / "missing.npz")
    with pytest.raises(FormatError, match="unknown suffix"):
        save_boxes(tmp_path / "x.txt", dets, "detections")


def test_detection_frames_without_ground_truth_are_an_error():
    dets, gts = _frames()
    with pytest.raises(FormatError, match="1 frame.*no ground truth.*scene/000005"):
        evaluate_frames(dets, gts[:5])


def test_save_rejects_bad_frames(tmp_path):
    with pytest.raises(FormatError, match="frame 'x': field 'scores' is not allowed"):
        save_boxes(tmp_path / "g.npz", [FrameBoxes("x", np.array([BOX]), np.array([0.3]))], "ground_truth")
    with pytest.raises(FormatError, match="duplicates"):
        save_boxes(tmp_path / "g.npz", [FrameBoxes("x", np.array([BOX]))] * 2, "ground_truth")
