"""One process or many: ``torchrun --nproc_per_node=N -m lenskit dataset ...``.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) the process group is started here:
gloo on CPUs, NCCL on GPUs, each rank on ``cuda:LOCAL_RANK`` when there are GPUs. Rank r
takes the batches whose index is r modulo the world size (a batch is cut from the whole set,
so its prompts and their padding do not depend on the number of processes); the sufficient
statistics are summed over ranks with an all-reduce and rank 0 writes the summary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Ranks", "ranks_from_environment"]


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """Whether a process group connects several processes."""
        return self.world > 1

    def owns(self, index: int) -> bool:
        """Whether batch (or part) ``index`` is this rank's."""
        return index % self.world == self.rank

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def sum(self, vector: np.ndarray) -> np.ndarray:
        """``vector`` (float64) summed over all ranks."""
        if not self.active:
            return vector
        device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
        tensor = torch.as_tensor(vector, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.cpu().numpy()

    def broadcast_error(self, message: str | None) -> str | None:
        """Rank 0's error message (or None) on every rank, so all stop together."""
        if not self.active:
            return message
        box = [message]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """End the process group this module started (the last call of a torchrun process)."""
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def device(self, requested: str | None) -> str | None:
        """The device of this rank: ``cuda:LOCAL_RANK`` on GPU machines under torchrun."""
        if self.active and torch.cuda.is_available() and requested in (None, "auto", "cuda"):
            return f"cuda:{self.local_rank}"
        return requested


def ranks_from_environment() -> Ranks:
    """The ranks of a torchrun launch (starting the process group), else a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Ranks(
            torch.distributed.get_rank(),
            torch.distributed.get_world_size(),
            int(os.environ.get("LOCAL_RANK", "0")),
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local)
    return Ranks(torch.distributed.get_rank(), torch.distributed.get_world_size(), local)
