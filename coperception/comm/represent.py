"""How a selected BEV cell's feature vector travels: raw floats, a learned 1x1 autoencoder, or codes.

Every representation has one interface, used by the strategies of :mod:`coperception.comm.select`:

* ``payload(features (C, H, W), indices (K,) | None) -> Payload`` -- the sender side; ``indices``
  are flattened row-major cells, ``None`` means the whole map;
* ``restore(payload, channels, device) -> (features (C, H, W), mask (1, H, W))`` -- the receiver
  side, from a *decoded* payload (so quantisation is exactly what the wire carried);
* ``roundtrip(features (A, C, H, W)) -> (features, aux_losses)`` -- the differentiable training
  simulation of send + receive.

Representations:

* :class:`FloatCells` -- the features themselves (fp32 / fp16 / int8 on the wire).
* :class:`Compressor` -- a learned per-cell autoencoder (1x1 convs, so any cell subset can be
  sent and decoded on its own), the channel compressor of OpenCOOD's ``NaiveCompressor`` /
  CoSDH (C -> C/r, fp16 at inference) but per cell instead of 3x3.
* :class:`Codebook` -- CodeFilling (Hu et al., "Communication-Efficient Collaborative Perception
  via Information Filling with Codebook", CVPR 2024): a multi-group, multi-stage *residual* vector
  quantiser shared by all agents, so a cell travels as ``groups x stages`` integer codes (2 x 3 codes
  of 16 entries = 24 bits before entropy coding, against C x 32 bits as floats). Training uses the
  straight-through estimator with the VQ-VAE codebook + commitment losses; unused codes are
  re-seeded from the batch (dead-code reassignment).
"""

from __future__ import annotations

import zlib
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coperception.comm.message import CodebookIndices, DenseFeatures, Payload, SparseCells
from coperception.errors import ConfigError, WireError


def _cells(features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(C, H, W) map + (K,) flat cells -> (K, C) vectors."""
    return features.flatten(1).index_select(1, indices).t()


def _scatter(values: torch.Tensor, indices: torch.Tensor, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, C) vectors at flat cells -> (C, H, W) map (zeros elsewhere) and its (1, H, W) mask."""
    c, h, w = shape
    out = values.new_zeros(c, h * w)
    mask = values.new_zeros(1, h * w)
    if indices.numel():
        out[:, indices] = values.t()
        mask[:, indices] = 1.0
    return out.reshape(c, h, w), mask.reshape(1, h, w)


def _np_indices(payload) -> torch.Tensor:
    return torch.from_numpy(np.asarray(payload.indices, dtype=np.int64))


@runtime_checkable
class Representation(Protocol):
    """How a strategy's cells travel: floats, a learned compressor, codebook codes.

    ``payload(features (C, H, W), indices (K,) flat cells or None = all, dtype)`` -> a wire payload;
    ``restore(payload, device)`` -> ((C, H, W) features, (1, H, W) mask) on the receiver, from the
    payload alone; ``roundtrip(features (N, C, H, W))`` -> (features, aux losses), the
    differentiable stand-in used in training; ``wire_channels`` / ``cell_min_bytes`` size a cell.
    """

    @property
    def wire_channels(self) -> int: ...

    @property
    def cell_min_bytes(self) -> int: ...

    def payload(self, features: torch.Tensor, indices: torch.Tensor | None, dtype: str | None = None) -> Payload: ...

    def restore(self, payload: Payload, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]: ...

    def roundtrip(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class FloatCells(nn.Module):
    """Features as floats. dtype: wire precision ("fp32", "fp16", "int8")."""

    def __init__(self, channels: int, dtype: str = "fp16") -> None:
        super().__init__()
        if dtype not in ("fp32", "fp16", "int8"):
            raise ConfigError(f"comm representation dtype must be fp32, fp16 or int8, got {dtype!r}")
        self.channels, self.dtype = int(channels), dtype

    @property
    def wire_channels(self) -> int:
        return self.channels

    @property
    def cell_min_bytes(self) -> int:
        """Bytes every sent cell adds at least (its values; indices come on top)."""
        return self.wire_channels * {"fp32": 4, "fp16": 2, "int8": 1}[self.dtype]

    def encode_cells(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors

    def decode_cells(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors

    def payload(self, features: torch.Tensor, indices: torch.Tensor | None, dtype: str | None = None) -> Payload:
        dtype = dtype or self.dtype
        if indices is None:
            code = self.encode_cells(features.flatten(1).t()).t().reshape(-1, *features.shape[1:])
            return DenseFeatures(code.float().cpu(), dtype)
        vectors = self.encode_cells(_cells(features, indices))
        return SparseCells((vectors.shape[1], *features.shape[1:]), indices.cpu(), vectors.float().cpu(), dtype)

    def restore(self, payload: Payload, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(payload, DenseFeatures):
            code = torch.from_numpy(payload.tensor).to(device)
            self._check_wire(code.shape[0])
            out = self.decode_cells(code.flatten(1).t()).t().reshape(self.channels, *code.shape[1:])
            return out, torch.ones(1, *code.shape[1:], device=device)
        if isinstance(payload, SparseCells):
            self._check_wire(payload.shape[0])
            values = self.decode_cells(torch.from_numpy(payload.values).to(device))
            return _scatter(values, _np_indices(payload).to(device), (self.channels, *payload.shape[1:]))
        raise WireError(f"{type(self).__name__} cannot restore a {type(payload).__name__} payload")

    def _check_wire(self, c: int) -> None:
        if c != self.wire_channels:
            raise WireError(f"received features with {c} channels; this model's messages have {self.wire_channels}")

    def roundtrip(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return features, {}


class Compressor(FloatCells):
    """Learned per-cell autoencoder: C -> C / ratio channels on the wire (fp16 by default).

    Encoder: 1x1 conv (linear). Decoder: 1x1 conv + ReLU, 1x1 conv + ReLU (backbone features are
    ReLU outputs). Training adds ``recon_weight * MSE(decoded, features)`` to the detection loss.
    """

    def __init__(self, channels: int, ratio: int = 16, dtype: str = "fp16", recon_weight: float = 1.0) -> None:
        super().__init__(channels, dtype)
        if ratio < 1 or channels % ratio:
            raise ConfigError(f"compressor ratio must divide the channels ({channels}), got {ratio}")
        code = channels // ratio
        self.ratio, self.recon_weight = int(ratio), float(recon_weight)
        self.encoder = nn.Linear(channels, code)
        self.decoder = nn.Sequential(nn.Linear(code, channels), nn.ReLU(), nn.Linear(channels, channels), nn.ReLU())

    @property
    def wire_channels(self) -> int:
        return self.channels // self.ratio

    def encode_cells(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.encoder(vectors)

    def decode_cells(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.decoder(vectors.to(self.encoder.weight.dtype))

    def roundtrip(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = features.permute(0, 2, 3, 1)
        code = self.encoder(x)
        if self.dtype == "fp16":  # what the wire does to the code (straight through)
            code = code + (code.half().float() - code).detach()
        out = self.decoder(code).permute(0, 3, 1, 2)
        return out, {"loss_comm_recon": self.recon_weight * F.mse_loss(out, features.detach())}


class Codebook(nn.Module):
    """Residual multi-group vector quantiser (CodeFilling's message codebook).

    channels: C of the BEV map; groups: G splits of the (projected) vector, each quantised with its
    own codebooks; stages: residual stages per group; size: codes per codebook (<= 65536).
    beta: commitment loss weight. The code of a cell is (G * stages) integers.
    """

    def __init__(self, channels: int, groups: int = 2, stages: int = 3, size: int = 16, beta: float = 0.25,
                 loss_weight: float = 1.0, dead_code_steps: int = 50) -> None:
        super().__init__()
        if channels % groups:
            raise ConfigError(f"codebook groups ({groups}) must divide the channels ({channels})")
        if not 2 <= size <= 1 << 16 or stages < 1:
            raise ConfigError(f"codebook size must be in [2, 65536] and stages >= 1, got {size}, {stages}")
        self.channels, self.groups, self.stages, self.size = int(channels), int(groups), int(stages), int(size)
        self.beta, self.loss_weight, self.dead_code_steps = float(beta), float(loss_weight), int(dead_code_steps)
        d = channels // groups
        self.project = nn.Linear(channels, channels)
        self.restore_head = nn.Sequential(nn.Linear(channels, channels), nn.ReLU())
        self.codes = nn.Parameter(torch.randn(groups, stages, size, d) * (2.0 / (5 * d)) ** 0.5)
        self.register_buffer("idle_steps", torch.zeros(groups, stages, size, dtype=torch.long))

    @property
    def codebook_id(self) -> int:
        """CRC-32 of the codebook's float32 bytes: a receiver refuses codes of another codebook."""
        return zlib.crc32(self.codes.detach().float().cpu().numpy().tobytes())

    def quantise(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C) features -> codes (N, G * stages) int64 and the quantised projected vectors (N, C)."""
        return self._quantise_projected(self.project(vectors))

    def _quantise_projected(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = z.shape[0]
        z = z.reshape(n, self.groups, -1)
        residual, quant, codes = z, torch.zeros_like(z), []
        for s in range(self.stages):
            book = self.codes[:, s]  # (G, size, d)
            dist = (residual.pow(2).sum(-1, keepdim=True) - 2 * torch.einsum("ngd,gkd->ngk", residual, book)
                    + book.pow(2).sum(-1)[None])
            idx = dist.argmin(-1)  # (N, G)
            picked = book[torch.arange(self.groups, device=idx.device)[None], idx]
            quant, residual = quant + picked, residual - picked
            codes.append(idx)
        return torch.stack(codes, dim=-1).reshape(n, -1), quant.reshape(n, -1)

    def dequantise(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, G * stages) codes -> restored (N, C) features."""
        c = codes.reshape(codes.shape[0], self.groups, self.stages)
        g = torch.arange(self.groups, device=codes.device)[None, :, None]
        s = torch.arange(self.stages, device=codes.device)[None, None, :]
        quant = self.codes[g, s, c].sum(dim=2).reshape(codes.shape[0], -1)
        return self.restore_head(quant)

    # -- wire ---------------------------------------------------------------------------------
    @property
    def wire_channels(self) -> int:
        return 0

    @property
    def cell_min_bytes(self) -> int:
        return 0  # entropy-coded codes can cost well under a byte per cell

    def payload(self, features: torch.Tensor, indices: torch.Tensor | None, dtype: str | None = None) -> Payload:
        h, w = features.shape[1:]
        if indices is None:
            indices = torch.arange(h * w, device=features.device)
        codes, _ = self.quantise(_cells(features, indices))
        return CodebookIndices((h, w), indices.cpu(), codes.cpu(), self.size, self.codebook_id)

    def restore(self, payload: Payload, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(payload, CodebookIndices):
            raise WireError(f"Codebook cannot restore a {type(payload).__name__} payload")
        if payload.codebook_id != self.codebook_id or payload.codebook_size != self.size \
                or payload.num_groups != self.groups * self.stages:
            raise WireError(f"codes for codebook {payload.codebook_id:#010x} ({payload.codebook_size} x "
                            f"{payload.num_groups}); this model holds {self.codebook_id:#010x} "
                            f"({self.size} x {self.groups * self.stages})")
        values = self.dequantise(torch.from_numpy(payload.codes).to(device))
        return _scatter(values, _np_indices(payload).to(device), (self.channels, *payload.shape))

    # -- training -----------------------------------------------------------------------------
    def roundtrip(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a, c, h, w = features.shape
        x = features.permute(0, 2, 3, 1).reshape(-1, c)
        z = self.project(x)
        codes, quant = self._quantise_projected(z)
        vq = F.mse_loss(quant, z.detach()) + self.beta * F.mse_loss(z, quant.detach())
        quant_st = z + (quant - z).detach()
        out = self.restore_head(quant_st)
        recon = F.mse_loss(out, x.detach())
        if self.training:
            self._reseed_dead(codes, z.detach())
        out = out.reshape(a, h, w, c).permute(0, 3, 1, 2)
        return out, {"loss_comm_vq": self.loss_weight * vq, "loss_comm_recon": self.loss_weight * recon}

    @torch.no_grad()
    def _reseed_dead(self, codes: torch.Tensor, z: torch.Tensor) -> None:
        """Codes unused for ``dead_code_steps`` steps move to random projected vectors of the batch
        (first stage; later stages to residual-sized perturbations of a used code)."""
        used = torch.zeros_like(self.idle_steps, dtype=torch.bool)
        c = codes.reshape(-1, self.groups, self.stages)
        for g in range(self.groups):
            for s in range(self.stages):
                used[g, s, c[:, g, s].unique()] = True
        self.idle_steps.add_(1).masked_fill_(used, 0)
        dead = self.idle_steps >= self.dead_code_steps
        if not dead.any() or z.shape[0] == 0:
            return
        zg = z.reshape(z.shape[0], self.groups, -1)
        for g, s, k in dead.nonzero().tolist():
            row = int(torch.randint(z.shape[0], (1,)))
            scale = 1.0 if s == 0 else 0.1
            self.codes.data[g, s, k] = zg[row, g] * scale
        self.idle_steps.masked_fill_(dead, 0)


#: Representations by name: ``REPRESENTATIONS[name](channels, **args)``.
REPRESENTATIONS: dict[str, type] = {"float": FloatCells, "compressor": Compressor, "codebook": Codebook}
