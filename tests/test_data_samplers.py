"""fpn.data.samplers: deterministic infinite training stream, rank shards, aspect-ratio grouping, resume at batch k,
and inference shards covering every index once."""
import itertools

import pytest
import torch

from fpn.data.samplers import GroupedBatchSampler, InferenceSampler, TrainingSampler


def _take(iterable, n):
    return list(itertools.islice(iterable, n))


def test_training_sampler_epochs_are_seeded_permutations():
    sampler = TrainingSampler(7, seed=5)
    stream = _take(sampler, 7 * 3)
    for epoch in range(3):
        expected = torch.randperm(7, generator=torch.Generator().manual_seed(5 + epoch)).tolist()
        assert stream[7 * epoch : 7 * (epoch + 1)] == expected
    assert stream[:7] != stream[7:14]  # a new order every epoch
    assert _take(TrainingSampler(7, seed=5), 21) == stream  # identical after a restart
    assert _take(TrainingSampler(7, seed=6), 7) != stream[:7]


def test_training_sampler_without_shuffle_and_with_epoch():
    assert _take(TrainingSampler(3, shuffle=False), 7) == [0, 1, 2, 0, 1, 2, 0]
    keys = _take(TrainingSampler(3, shuffle=False, with_epoch=True), 7)
    assert keys == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2)]
    shuffled = _take(TrainingSampler(4, seed=2, with_epoch=True), 8)
    assert [index for index, _ in shuffled] == _take(TrainingSampler(4, seed=2), 8)


@pytest.mark.parametrize("size, world_size", [(10, 3), (4, 4), (2, 3), (1, 1)])
def test_training_sampler_shards_cover_each_epoch(size, world_size):
    shards = [TrainingSampler(size, seed=1, rank=r, world_size=world_size) for r in range(world_size)]
    full = TrainingSampler(size, seed=1)
    for epoch in range(2):
        per_rank = [shard.epoch_indices(epoch) for shard in shards]
        assert sorted(itertools.chain(*per_rank)) == list(range(size))  # disjoint and complete
        for rank, indices in enumerate(per_rank):
            assert indices == full.epoch_indices(epoch)[rank::world_size]


@pytest.mark.parametrize(
    "kwargs, bad", [({"size": 0}, "size"), ({"size": 3, "rank": 2, "world_size": 2}, "rank"),
                    ({"size": 3, "world_size": 0}, "world_size")]
)
def test_training_sampler_rejects_bad_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        TrainingSampler(**kwargs)


GROUPS = [0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1]  # 11 images: 6 landscape, 5 portrait


def test_grouped_batches_share_a_group_and_cover_a_finite_sampler():
    batches = list(GroupedBatchSampler(list(range(11)), GROUPS, batch_size=2))
    # full batches in the order their buffer fills, then leftovers, group 0 first
    assert batches == [[1, 2], [0, 3], [4, 6], [5, 8], [7, 9], [10]]
    for batch in batches:
        assert len({GROUPS[i] for i in batch}) == 1
    assert sorted(itertools.chain(*batches)) == list(range(11))
    assert len(GroupedBatchSampler(list(range(11)), GROUPS, batch_size=2)) == 6
    dropped = GroupedBatchSampler(list(range(11)), GROUPS, batch_size=2, drop_last=True)
    assert list(dropped) == batches[:5] and len(dropped) == 5
    assert len(GroupedBatchSampler(list(range(11)), GROUPS, batch_size=2, start_batch=4)) == 2


def test_grouped_batches_from_an_infinite_sampler_are_full_and_deterministic():
    first = _take(GroupedBatchSampler(TrainingSampler(11, seed=3), GROUPS, batch_size=3), 20)
    again = _take(GroupedBatchSampler(TrainingSampler(11, seed=3), GROUPS, batch_size=3), 20)
    assert first == again
    for batch in first:
        assert len(batch) == 3 and len({GROUPS[i] for i in batch}) == 1
    with pytest.raises(TypeError, match="infinite"):
        len(GroupedBatchSampler(TrainingSampler(11), GROUPS, batch_size=3))


@pytest.mark.parametrize("start_batch", [0, 1, 7, 23])
def test_resume_at_batch_k_equals_the_tail_of_a_fresh_stream(start_batch):
    fresh = _take(GroupedBatchSampler(TrainingSampler(11, seed=4, with_epoch=True), GROUPS, 2), start_batch + 6)
    resumed = _take(GroupedBatchSampler(TrainingSampler(11, seed=4, with_epoch=True), GROUPS, 2, start_batch), 6)
    assert resumed == fresh[start_batch:]
    for batch in resumed:  # (index, epoch) keys are grouped by their index
        assert len({GROUPS[index] for index, _ in batch}) == 1


def test_grouped_batch_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        GroupedBatchSampler([0], [0], batch_size=0)
    with pytest.raises(ValueError, match="start_batch"):
        GroupedBatchSampler([0], [0], batch_size=1, start_batch=-1)
    with pytest.raises(ValueError, match="index 3"):
        list(GroupedBatchSampler([0, 3], [0, 1], batch_size=1))


@pytest.mark.parametrize("size, world_size", [(10, 3), (10, 1), (2, 4), (0, 2), (7, 7)])
def test_inference_shards_are_contiguous_and_cover_all_once(size, world_size):
    shards = [list(InferenceSampler(size, rank, world_size)) for rank in range(world_size)]
    assert list(itertools.chain(*shards)) == list(range(size))  # contiguous, in rank order, no overlap
    lengths = [len(InferenceSampler(size, rank, world_size)) for rank in range(world_size)]
    assert lengths == [len(shard) for shard in shards]
    assert max(lengths) - min(lengths) <= 1


def test_inference_shard_exact_split_and_bad_rank():
    assert [list(InferenceSampler(10, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(ValueError, match="rank"):
        InferenceSampler(10, rank=3, world_size=3)
