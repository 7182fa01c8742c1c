"""Process groups and FSDP2 for ``torchrun``; single-process runs use the same code path.

Parallelism is applied from outside the model (torchtitan's order): ``fully_shard`` on each
transformer block, then on the root. Gradients are averaged over processes by FSDP, so a
loss that is a mean over the local batch gives the gradient of the global-batch mean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from causal_rcm.devices import resolve_device


@dataclass
class DistEnv:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_dist(device_name: str) -> DistEnv:
    """Join the torchrun process group if WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if size == 1:
        return DistEnv(0, 1, device)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, size, device)


def barrier(world: DistEnv) -> None:
    """Wait for every process (nothing to wait for without torchrun)."""
    if world.distributed and dist.is_initialized():
        dist.barrier()


def shutdown(world: DistEnv) -> None:
    """Leave the process group once every process is done (the main one may still be exporting)."""
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def apply_fsdp(model: nn.Module, world: DistEnv, mixed_precision: bool) -> nn.Module:
    """FSDP2: shard each block of ``model.blocks`` (if any) and the root; bf16 params, fp32 reduce."""
    if not world.distributed:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(world.device.type, (world.size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else MixedPrecisionPolicy()
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def all_reduce_mean(value: torch.Tensor, world: DistEnv) -> torch.Tensor:
    if world.distributed:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= world.size
    return value


def global_max(value: float, world: DistEnv) -> float:
    """Largest of a host scalar over the processes (itself, with no device sync, without torchrun)."""
    if not world.distributed:
        return value
    t = torch.tensor(value, dtype=torch.float64, device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def global_sum(value: torch.Tensor) -> float:
    """Sum of a scalar over the processes (itself without torchrun): for decisions every rank must share."""
    if dist.is_available() and dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
    return float(value)


def global_mean(value: torch.Tensor) -> float:
    """Mean of a scalar over the processes (itself without torchrun)."""
    size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return global_sum(value) / size


class StepRandom:
    """Randomness of one training step, identical whatever the number of processes.

    Every draw is made for the *global* batch from a generator seeded by (seed, step, draw
    index), and each process keeps its rows: 1 process and N processes see the same noise,
    and a resumed run sees the same noise as an uninterrupted one. Rows are interleaved
    (process r keeps rows r, r + N, ...) like the data's sharding, so that every sample gets
    the same noise whatever the number of processes.

    Draws are made on the training device by that device's generator: on a GPU, drawing a
    teacher step's noise (256 x 48 x 8 x 8 x 8 normals) on the host took ~70 ms, about a whole
    step of the shapes-world teacher. So a run's noise depends on the device type (as its
    arithmetic does), never on the number of processes.
    """

    def __init__(self, seed: int, step: int, world: DistEnv) -> None:
        self.seed, self.step, self.world = seed, step, world
        self._draw = 0

    def _generator(self, device: torch.device | None = None) -> torch.Generator:
        self._draw += 1
        generator = torch.Generator(device=device or self.world.device)
        return generator.manual_seed((self.seed * 1_000_003 + self.step) * 1_009 + self._draw)

    def _local(self, make, local_shape: tuple[int, ...]) -> torch.Tensor:
        global_shape = (local_shape[0] * self.world.size, *local_shape[1:])
        full = make(global_shape, self._generator(), self.world.device)
        return full[self.world.rank :: self.world.size]

    def randn(self, *local_shape: int) -> torch.Tensor:
        return self._local(lambda s, g, d: torch.randn(s, generator=g, device=d), tuple(local_shape))

    def rand(self, *local_shape: int) -> torch.Tensor:
        return self._local(lambda s, g, d: torch.rand(s, generator=g, device=d), tuple(local_shape))

    def randint(self, high: int, *local_shape: int) -> torch.Tensor:
        return self._local(lambda s, g, d: torch.randint(high, s, generator=g, device=d), tuple(local_shape))

    def shared_randint(self, high: int) -> int:
        """One integer in [0, high), the same on every process (e.g. self forcing's exit step)."""
        return int(torch.randint(high, (1,), generator=self._generator(torch.device("cpu"))))

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(*x.shape).to(x.dtype)
