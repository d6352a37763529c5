"""DDP on CPU with gloo: two ranks stay in sync and cover the dataset between them."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_trainer import Noisy, Regressor, collate  # noqa: E402  (sibling test module)

from coperception.train import TrainConfig, Trainer, init_distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out_dir, result_path):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, batch_size=2, lr=1e-2, seed=3)
    trainer = Trainer(Regressor(), Noisy(), collate, cfg, out_dir, info, tensorboard=False)
    trainer.fit()
    flat = torch.cat([p.detach().flatten() for p in trainer.module.parameters()])
    torch.save({"params": flat, "steps": trainer.step}, f"{result_path}.{rank}")
    dist.destroy_process_group()


def test_two_rank_gloo_training_stays_in_sync(tmp_path):
    port = _free_port()
    mp.spawn(_worker, args=(port, str(tmp_path), str(tmp_path / "r")), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"r.{i}", weights_only=True) for i in (0, 1))
    assert r0["steps"] == r1["steps"] == 2 * 3  # 10 samples / 2 ranks / batch 2 -> 3 steps per epoch
    assert torch.equal(r0["params"], r1["params"])
    assert (tmp_path / "checkpoints" / "last.pt").exists()
