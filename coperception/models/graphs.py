"""CUDA-graph replay of static-shape submodules for inference (launch overhead -> one replay).

A BEV backbone, fusion and head run on tensors whose shapes depend only on the number of agents
(the grid is fixed), yet at a few milliseconds per frame their ~100 kernel launches cost as much
as the arithmetic. :class:`GraphedModule` captures one CUDA graph per input shape the first time
it sees it (after a few warm-up calls on a side stream, as PyTorch requires) and replays it
afterwards: the input is copied into the graph's static buffer, the graph is replayed, and the
output is cloned out of its static buffer (so a caller may keep it across calls).

It falls back to the plain module on the CPU, while autograd is recording (training), or when the
module is in training mode. The wrapped module must be free of host synchronisation and of
data-dependent shapes (true for convolutions, batch norm in eval mode, fixed-grid warping).
:func:`graph_inference` wraps the backbone and the head of a :class:`CooperativeDetector`.
"""

from __future__ import annotations

import torch
from torch import nn


def _clone_tree(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, (list, tuple)):
        return type(x)(_clone_tree(v) for v in x)
    return x


class GraphedModule(nn.Module):
    """``module`` replayed from a CUDA graph per (shape, dtype, device) of its single tensor input.

    max_graphs: graphs kept (each holds its static buffers); beyond it the plain module runs.
    """

    def __init__(self, module: nn.Module, warmup: int = 3, max_graphs: int = 8) -> None:
        super().__init__()
        self.module, self.warmup, self.max_graphs = module, int(warmup), int(max_graphs)
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, object]] = {}

    def forward(self, x: torch.Tensor):
        if not x.is_cuda or torch.is_grad_enabled() or self.module.training:
            return self.module(x)
        key = (tuple(x.shape), x.dtype, x.device, torch.is_autocast_enabled("cuda"))
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                return self.module(x)
            entry = self._graphs[key] = self._capture(x)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return _clone_tree(static_out)

    def _capture(self, x: torch.Tensor):
        static_in = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.module(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.module(static_in)
        return graph, static_in, static_out

    def reset(self) -> None:
        """Drop the captured graphs (e.g. after the weights changed)."""
        self._graphs.clear()


def graph_inference(model: nn.Module) -> nn.Module:
    """Wrap ``model.encoder.backbone`` (if any) and ``model.head``'s convolutions for graph replay.

    Returns the model (modified in place). Weights are shared, so a checkpoint loads either way;
    call again after loading new weights is not needed (graphs read the live parameters), but
    after changing a module's structure call ``reset`` on the wrappers.
    """
    backbone = getattr(getattr(model, "encoder", None), "backbone", None)
    if isinstance(backbone, nn.Module) and not isinstance(backbone, GraphedModule):
        model.encoder.backbone = GraphedModule(backbone)
    return model
