"""Samplers: shards, determinism, aspect-ratio grouping."""
import itertools

from retinakit.data.samplers import (
    InferenceSampler,
    TrainingSampler,
    batch_indices,
    portrait_flags,
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
        assert [i for p in parts for i in p] == list(range(size))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_batch_indices_grouping():
    portrait = portrait_flags([{"height": h, "width": w} for h, w in [(10, 20), (20, 10), (10, 10), (30, 10), (5, 6), (7, 3)]] + [{}])
    assert portrait == [False, True, False, True, False, True, False]
    assert list(batch_indices(iter([0, 1, 2, 3, 4, 6]), portrait, 2)) == [[0, 2], [1, 3], [4, 6]]
    assert list(batch_indices(iter(range(5)), portrait, 2, group=False)) == [[0, 1], [2, 3], [4]]
    assert list(batch_indices(iter([1, 0, 5]), portrait, 3)) == [[0], [1, 5]]  # finite: partial batches at the end
