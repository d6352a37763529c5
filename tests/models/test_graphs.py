"""CUDA-graph replay of the backbone: same outputs as the plain module, plain path off the GPU."""

import pytest
import torch

from coperception.encoders.backbone import BEVBackbone
from coperception.models.graphs import GraphedModule


def _backbone():
    torch.manual_seed(0)
    return BEVBackbone(8, (1, 1), (2, 2), (8, 16), (1, 2), (8, 8)).eval()


def test_cpu_and_training_use_the_plain_module():
    net = _backbone()
    graphed = GraphedModule(net)
    x = torch.rand(2, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(graphed(x), net(x))
    assert not graphed._graphs
    net.train()
    out = graphed(x)  # grad enabled + training: plain module, differentiable
    out.sum().backward()
    assert next(net.parameters()).grad is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_replay_equals_the_module_for_each_shape():
    net = _backbone().cuda()
    graphed = GraphedModule(net)
    with torch.no_grad():
        for agents in (2, 3, 2):
            x = torch.rand(agents, 8, 32, 32, device="cuda")
            out = graphed(x)
            torch.testing.assert_close(out, net(x))
            keep = out.clone()
            graphed(torch.rand_like(x))
            torch.testing.assert_close(out, keep)  # returned tensors are not overwritten by the next replay
    assert len(graphed._graphs) == 2
