"""Pure-torch sparse convolutions against a dense F.conv3d reference and against spconv."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from coperception.encoders.sparse_conv import (
    SparseConv3d,
    SparseTensor,
    conv_output_shape,
    kernel_offsets,
    set_method,
    sparse_to_dense,
)
from coperception.errors import ConfigError

HAS_SPCONV = importlib.util.find_spec("spconv") is not None


def _random_sparse(seed: int, batch: int = 2, shape=(6, 7, 9), density: float = 0.15, channels: int = 3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, *shape, generator=g) < density
    idx = mask.nonzero().contiguous()
    feats = torch.randn(len(idx), channels, generator=g)
    return SparseTensor(feats, idx, shape, batch), mask


def _at_sites(dense: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    i = indices.long()
    return dense[i[:, 0], :, i[:, 1], i[:, 2], i[:, 3]]


def _torch_weight(conv: SparseConv3d) -> torch.Tensor:
    return conv.weight.permute(0, 4, 1, 2, 3)




def test_kernel_offsets_are_row_major():
    offs = kernel_offsets((3, 2, 2))
    assert offs.shape == (12, 3)
    assert offs[1].tolist() == [0, 0, 1] and offs[2].tolist() == [0, 1, 0] and offs[4].tolist() == [1, 0, 0]


METHODS = ["gather", "scatter"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (3, 2), ((3, 1, 3), 1), (5, 1)])
def test_submanifold_matches_dense_conv(kernel, dilation, method):
    x, _ = _random_sparse(0)
    conv = SparseConv3d(3, 4, kernel, subm=True, dilation=dilation, method=method)
    y = conv(x)
    assert torch.equal(y.indices, x.indices) and y.spatial_shape == x.spatial_shape
    pad = [dilation * (k // 2) for k in conv.kernel_size]
    ref = F.conv3d(x.dense(), _torch_weight(conv), padding=pad, dilation=dilation)
    torch.testing.assert_close(y.features, _at_sites(ref, y.indices), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding", [
    (3, 2, 1), (3, 2, (0, 1, 1)), ((3, 1, 1), (2, 1, 1), 0), (2, 2, 0), (3, 1, 1), (3, 2, 0), (1, 1, 0)])
@pytest.mark.parametrize("method", METHODS)
def test_regular_conv_matches_dense_conv_and_site_rule(kernel, stride, padding, method):
    x, mask = _random_sparse(1)
    conv = SparseConv3d(3, 5, kernel, stride, padding, method=method)
    y = conv(x)
    ref = F.conv3d(x.dense(), _torch_weight(conv), stride=stride, padding=padding)
    assert tuple(ref.shape[2:]) == y.spatial_shape
    torch.testing.assert_close(y.features, _at_sites(ref, y.indices), atol=1e-5, rtol=1e-5)
    # Output sites: exactly those whose receptive field holds an active input.
    occ = F.conv3d(mask[:, None].float(), torch.ones(1, 1, *conv.kernel_size), stride=stride, padding=padding)
    expected = occ[:, 0].nonzero()
    assert torch.equal(y.indices, expected)  # sorted by [b, z, y, x] like nonzero()


@pytest.mark.parametrize("method", METHODS)
def test_gradients_match_dense_reference(method):
    x, _ = _random_sparse(2)
    feats = x.features.clone().requires_grad_(True)
    sub = SparseConv3d(3, 4, 3, subm=True, method=method)
    down = SparseConv3d(4, 2, 3, 2, 1, method=method)
    y = down(sub(x.replace_feature(feats)))
    probe = torch.randn_like(y.features)
    (y.features * probe).sum().backward()

    feats_ref = x.features.clone().requires_grad_(True)
    w1 = _torch_weight(sub).detach().clone().requires_grad_(True)
    w2 = _torch_weight(down).detach().clone().requires_grad_(True)
    dense_in = sparse_to_dense(feats_ref, x.indices, x.spatial_shape, x.batch_size)
    mask = sparse_to_dense(torch.ones(len(x.indices), 1), x.indices, x.spatial_shape, x.batch_size)
    h = F.conv3d(dense_in, w1, padding=1) * mask  # submanifold: outputs only at input sites
    out = F.conv3d(h, w2, stride=2, padding=1)
    (_at_sites(out, y.indices) * probe).sum().backward()
    torch.testing.assert_close(feats.grad, feats_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sub.weight.grad.permute(0, 4, 1, 2, 3), w1.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(down.weight.grad.permute(0, 4, 1, 2, 3), w2.grad, atol=1e-4, rtol=1e-4)


def test_submanifold_rulebook_is_cached_and_shared():
    x, _ = _random_sparse(3)
    conv_a, conv_b = SparseConv3d(3, 3, 3, subm=True), SparseConv3d(3, 3, 3, subm=True)
    y = conv_a(x)
    assert len(x.rulebooks) == 1 and y.rulebooks is x.rulebooks
    z = conv_b(y.replace_feature(torch.relu(y.features)))
    assert len(z.rulebooks) == 1  # reused, not rebuilt under a new key


@pytest.mark.parametrize("method", METHODS)
def test_empty_input_and_bias(method):
    x = SparseTensor(torch.zeros(0, 3), torch.zeros(0, 4, dtype=torch.long), (4, 4, 4), 1)
    for conv in (SparseConv3d(3, 2, 3, subm=True, bias=True, method=method),
                 SparseConv3d(3, 2, 3, 2, 1, method=method)):
        y = conv(x)
        assert y.features.shape == (0, 2)
    one = SparseTensor(torch.ones(1, 3), torch.tensor([[0, 1, 1, 1]]), (4, 4, 4), 1)
    conv = SparseConv3d(3, 2, 3, subm=True, bias=True, method=method)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([1.0, -2.0]))
    expected = conv.weight[:, 1, 1, 1].sum(dim=1) + conv.bias
    torch.testing.assert_close(conv(one).features[0], expected)


def test_invalid_configurations_raise():
    with pytest.raises(ConfigError, match="odd kernel"):
        SparseConv3d(3, 3, 2, subm=True)(_random_sparse(0)[0])
    with pytest.raises(ConfigError, match="stride 1"):
        SparseConv3d(3, 3, 3, stride=2, subm=True)
    with pytest.raises(ConfigError, match="empty output"):
        conv_output_shape((2, 8, 8), (3, 3, 3), (2, 2, 2), (0, 0, 0), (1, 1, 1))
    with pytest.raises(ConfigError, match="method"):
        SparseConv3d(3, 3, 3, subm=True, method="magic")(_random_sparse(0)[0])
    with pytest.raises(ConfigError, match="method"):
        set_method(SparseConv3d(3, 3, 3), "magic")


SPCONV_CASES = [(True, 3, 1, 0), (True, 1, 1, 0), (False, 1, 1, 0), (False, 3, 2, 1), (False, 3, 2, (0, 1, 1)),
                (False, (3, 1, 1), (2, 1, 1), 0),
                (False, 2, 2, 0)]


def _both_backends(subm, kernel, stride, padding):
    """The same conv and input under both backends; returns the conv, features and dense outputs."""
    import spconv.pytorch as spconv

    x, _ = _random_sparse(4, shape=(9, 12, 11), density=0.12)
    conv = SparseConv3d(3, 4, kernel, stride, padding, subm=subm, indice_key="k")
    f_t = x.features.clone().requires_grad_(True)
    f_s = x.features.clone().requires_grad_(True)
    y_t = conv(x.replace_feature(f_t))
    y_s = conv(spconv.SparseConvTensor(f_s, x.indices.int().contiguous(), list(x.spatial_shape), x.batch_size))
    assert tuple(y_s.spatial_shape) == y_t.spatial_shape
    d_t = sparse_to_dense(y_t.features, y_t.indices, y_t.spatial_shape, x.batch_size)
    d_s = sparse_to_dense(y_s.features, y_s.indices, y_t.spatial_shape, x.batch_size)
    mask_t = sparse_to_dense(torch.ones(len(y_t.indices), 1), y_t.indices, y_t.spatial_shape, x.batch_size)
    mask_s = sparse_to_dense(torch.ones(len(y_s.indices), 1), y_s.indices, y_t.spatial_shape, x.batch_size)
    assert torch.equal(mask_t, mask_s)  # same output sites
    return conv, (f_t, d_t), (f_s, d_s)


@pytest.mark.skipif(not HAS_SPCONV, reason="spconv is not installed")
@pytest.mark.parametrize("subm,kernel,stride,padding", SPCONV_CASES)
def test_matches_spconv_forward(one_thread, subm, kernel, stride, padding):
    _, (_, d_t), (_, d_s) = _both_backends(subm, kernel, stride, padding)
    torch.testing.assert_close(d_t, d_s, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not HAS_SPCONV or not torch.cuda.is_available(),
                    reason="spconv 2.3.8's backward calls torch.cuda.current_stream(): needs CUDA torch")
@pytest.mark.parametrize("subm,kernel,stride,padding", SPCONV_CASES)
def test_matches_spconv_backward(one_thread, subm, kernel, stride, padding):
    conv, (f_t, d_t), (f_s, d_s) = _both_backends(subm, kernel, stride, padding)
    probe = torch.randn_like(d_t)
    (d_t * probe).sum().backward()
    grad_w_t = conv.weight.grad.clone()
    conv.weight.grad = None
    (d_s * probe).sum().backward()
    torch.testing.assert_close(f_t.grad, f_s.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad_w_t, conv.weight.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    x, _ = _random_sparse(5, shape=(9, 12, 11))
    sub, down = SparseConv3d(3, 4, 3, subm=True, method=method), SparseConv3d(4, 4, 3, 2, 1, method=method)
    y_cpu = down(sub(x))
    xc = SparseTensor(x.features.cuda(), x.indices.cuda(), x.spatial_shape, x.batch_size)
    y_gpu = down.cuda()(sub.cuda()(xc))
    assert torch.equal(y_gpu.indices.cpu(), y_cpu.indices)
    torch.testing.assert_close(y_gpu.features.cpu(), y_cpu.features, atol=1e-4, rtol=1e-4)
