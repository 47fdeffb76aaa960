"""Samplers: shards, determinism, aspect-ratio grouping."""
import itertools

import torch

from retinakit.data.samplers import (
    InferenceSampler,
    TrainingSampler,
    group_by_aspect_ratio,
)


def test_training_sampler_shards_one_permutation():
    full = list(itertools.islice(TrainingSampler(10, seed=3, rank=0, world_size=1), 30))
    assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10)) and full[:10] != full[10:20]
    shards = [list(itertools.islice(TrainingSampler(10, seed=3, rank=r, world_size=3), 7)) for r in range(3)]
    assert [x for trip in zip(*shards) for x in trip] == full[:21]
    again = list(itertools.islice(TrainingSampler(10, seed=3, rank=0, world_size=1), 30))
    other = list(itertools.islice(TrainingSampler(10, seed=4, rank=0, world_size=1), 30))
    assert again == full and other != full


def test_inference_sampler_covers_once():
    for size, world in [(10, 3), (2, 4), (0, 2), (7, 1)]:
        parts = [list(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)]
        assert sum(parts, []) == list(range(size))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_group_by_aspect_ratio():
    def item(h, w, k):
        return {"image": torch.zeros(3, h, w), "k": k}

    items = [item(10, 20, 0), item(20, 10, 1), None, item(10, 10, 2), item(30, 10, 3), item(5, 6, 4)]
    batches = list(group_by_aspect_ratio(iter(items), 2))
    assert [[b["k"] for b in batch] for batch in batches] == [[0, 2], [1, 3]]
    assert [[b["k"] for b in batch] for batch in group_by_aspect_ratio(iter(items), 2, group=False)] == [[0, 1], [2, 3]]
