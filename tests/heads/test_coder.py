"""Box coding round trip and direction bins."""

import math

import torch

from coperception.heads.coder import apply_direction, decode_boxes, direction_target, encode_boxes, limit_period


def random_boxes(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 7, generator=g, dtype=dtype)
    lo = torch.tensor([-50, -50, -3, 0.5, 0.5, 0.5, -math.pi], dtype=dtype)
    hi = torch.tensor([50, 50, 1, 12, 4, 4, math.pi], dtype=dtype)
    return lo + u * (hi - lo)


def test_encode_decode_round_trip():
    boxes, anchors = random_boxes(500, 0), random_boxes(500, 1)
    deltas = encode_boxes(boxes, anchors)
    torch.testing.assert_close(decode_boxes(deltas, anchors), boxes, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(encode_boxes(decode_boxes(deltas, anchors), anchors), deltas, atol=1e-9, rtol=1e-9)


def test_encoding_formula():
    anchor = torch.tensor([[1.0, 2.0, -1.0, 4.0, 3.0, 1.5, 0.5]])
    box = torch.tensor([[6.0, -3.0, 0.5, 8.0, 1.5, 3.0, 2.0]])
    expected = torch.tensor([[1.0, -1.0, 1.0, math.log(2), math.log(0.5), math.log(2), 1.5]])  # diagonal 5
    torch.testing.assert_close(encode_boxes(box, anchor), expected)


def test_direction_bins_recover_heading():
    yaw = torch.linspace(-math.pi, math.pi - 1e-6, 1001, dtype=torch.float64)
    bins = direction_target(yaw)
    assert set(bins.tolist()) == {0, 1}
    # Regressed yaw known only up to pi (sin-difference loss): the bin picks the right twin.
    for flip in (0.0, math.pi, -math.pi, 2 * math.pi):
        recovered = apply_direction(yaw + flip, bins)
        err = limit_period(recovered - yaw, 0.5, 2 * math.pi).abs()
        assert err.max() < 1e-9
        assert recovered.min() >= -math.pi and recovered.max() < math.pi


def test_direction_bin_edges_follow_offset():
    off = math.pi / 4
    assert direction_target(torch.tensor([off + 1e-6])).item() == 0
    assert direction_target(torch.tensor([off - 1e-6])).item() == 1
    assert direction_target(torch.tensor([off + math.pi + 1e-6])).item() == 1
    four = direction_target(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]), num_bins=4, dir_offset=0.0)
    assert four.tolist() == [0, 0, 1, 1, 2]
