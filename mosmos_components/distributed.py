"""The little that the handlers and metrics need from ``torch.distributed`` (bundles' ``multi_gpu_train.json``):
which rank writes files, and every rank's share of the validation results."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["is_distributed", "is_rank0", "gather_lists"]


def is_distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_rank0() -> bool:
    """True outside torch.distributed and on its rank 0."""
    return not is_distributed() or torch.distributed.get_rank() == 0


def gather_lists(items: list[Any]) -> list[Any]:
    """Concatenate ``items`` over all ranks (rank order; shards may differ in length; any picklable items).
    Outside torch.distributed: ``items`` itself."""
    if not is_distributed():
        return items
    out: list[list[Any]] = [[] for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather_object(out, items)
    return [x for shard in out for x in shard]
