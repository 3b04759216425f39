"""The order in which training samples are seen: seeded, sharded over ranks, resumable by step.

Epoch e visits a permutation seeded by (seed, e) (``DistributedSampler``), split into disjoint
shards, one per rank; each rank cuts its shard into batches of ``batch_size // world``. The
position after ``step`` batches is (step // batches_per_epoch, step % batches_per_epoch), so the
data order needs no state beyond the step and the seed.
"""

from __future__ import annotations

from itertools import count
from typing import Iterator

from torch.utils.data.distributed import DistributedSampler


def per_rank_batch(batch_size: int, world: int) -> int:
    if batch_size % world:
        raise ValueError(f"optim.batch_size = {batch_size}: must be divisible by the number of "
                         f"processes ({world}); it is the global batch, split over the ranks")
    return batch_size // world


def batch_indices(n: int, batch_size: int, *, rank: int, world: int, seed: int,
                  start_step: int = 0) -> Iterator[list[int]]:
    """Endless batches of dataset indices for ``rank`` (of ``world``), from ``start_step`` on."""
    local = per_rank_batch(batch_size, world)
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                 drop_last=True)
    per_epoch = len(sampler) // local
    if per_epoch == 0:
        raise ValueError(
            f"{n} training samples give {len(sampler)} per rank, fewer than one batch of "
            f"{local} (optim.batch_size = {batch_size} over {world} ranks): raise "
            f"data.num_images or lower optim.batch_size"
        )
    for epoch in count(start_step // per_epoch):
        sampler.set_epoch(epoch)
        order = list(sampler)
        first = start_step % per_epoch if epoch == start_step // per_epoch else 0
        for b in range(first, per_epoch):
            yield order[b * local:(b + 1) * local]
