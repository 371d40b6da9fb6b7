"""One rank of the multi-process DCP tests (torch.multiprocessing.spawn imports it)."""

import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from nzip.dcp import NzipStorageReader, NzipStorageWriter


def full_state() -> dict[str, torch.Tensor]:
    """Seeded weights of several dtypes; first dimensions that 2 and 4 ranks split unevenly."""
    g = torch.Generator().manual_seed(1234)
    return {
        "embed": (torch.randn(67, 48, generator=g) * 0.02).bfloat16(),
        "proj": torch.randn(33, 20, generator=g),
        "norm": torch.randn(45, generator=g).half(),
        "counts": torch.randint(0, 1000, (30,), generator=g),
    }


def run(rank: int, world: int, port: int, path: str, mode: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        full = full_state()
        if mode == "save":
            state = {"model": {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in full.items()}, "step": 7}
            dcp.save(state, storage_writer=NzipStorageWriter(path))
        else:  # load into a different sharding: dimension 1 where there is one
            state = {"model": {k: distribute_tensor(torch.zeros_like(v), mesh, [Shard(v.dim() - 1)])
                               for k, v in full.items()}, "step": 0}
            dcp.load(state, storage_reader=NzipStorageReader(path))
            for k, v in full.items():
                got = state["model"][k].full_tensor()
                assert got.dtype == v.dtype and torch.equal(got.view(-1).view(torch.uint8), v.view(-1).view(torch.uint8)), k
            assert state["step"] == 7, state["step"]
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # every rank is past its last collective: leave without running C++ destructors, where
    # gloo's background threads can abort the process at teardown ("terminate called
    # without an active exception", seen once in CI with 4 ranks on 2 cores)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
