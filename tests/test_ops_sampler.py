"""fpn.ops.BalancedPositiveNegativeSampler: counts and membership as torchvision's sampler, uniform draws, seeded."""
import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler as TVSampler

from fpn.ops import BalancedPositiveNegativeSampler


def _labels(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 3, (n,), generator=g)  # -1 ignore, 0 negative, 1 and 2 positive


def test_counts_and_membership():
    labels = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, -1, -1, 2])
    torch.manual_seed(0)
    pos, neg = BalancedPositiveNegativeSampler(8, 0.25)([labels])
    assert pos[0].dtype == torch.bool and pos[0].shape == labels.shape
    assert int(pos[0].sum()) == 2 and int(neg[0].sum()) == 6
    assert bool((labels[pos[0]] >= 1).all()) and bool((labels[neg[0]] == 0).all())
    assert not bool((pos[0] & neg[0]).any())


def test_few_positives_filled_with_negatives_and_few_negatives():
    labels = torch.tensor([1, 0, 0, 0, 0, 0, -1])
    pos, neg = BalancedPositiveNegativeSampler(4, 0.5)([labels])
    assert int(pos[0].sum()) == 1 and int(neg[0].sum()) == 3
    pos, neg = BalancedPositiveNegativeSampler(100, 0.5)([labels])
    assert int(pos[0].sum()) == 1 and int(neg[0].sum()) == 5


def test_empty_image():
    pos, neg = BalancedPositiveNegativeSampler(4, 0.5)([torch.zeros(0, dtype=torch.int64)])
    assert pos[0].shape == (0,) and neg[0].shape == (0,)


@pytest.mark.parametrize("batch, fraction", [(16, 0.25), (64, 0.5), (7, 0.3)])
def test_same_counts_as_torchvision(batch, fraction):
    labels = [_labels(1, 50), _labels(2, 30), _labels(3, 5)]
    torch.manual_seed(123)
    pos, neg = BalancedPositiveNegativeSampler(batch, fraction)(labels)
    tv_pos, tv_neg = TVSampler(batch, fraction)(labels)
    for label, ours_p, ours_n, ref_p, ref_n in zip(labels, pos, neg, tv_pos, tv_neg):
        assert int(ours_p.sum()) == int(ref_p.sum()) and int(ours_n.sum()) == int(ref_n.sum())
        assert bool((label[ours_p] >= 1).all()) and bool((label[ours_n] == 0).all())


def test_draw_is_uniform_among_positives_and_among_negatives():
    # 10 positives (2 drawn), 30 negatives (6 drawn), 5 ignored; 3000 independent images in one call
    labels = torch.tensor([1] * 10 + [0] * 30 + [-1] * 5)
    draws = 3000
    torch.manual_seed(0)
    pos, neg = BalancedPositiveNegativeSampler(8, 0.25)([labels] * draws)
    pos, neg = torch.stack(pos), torch.stack(neg)  # (draws, 45)
    assert (pos.sum(1) == 2).all() and (neg.sum(1) == 6).all()
    assert not pos[:, 10:].any() and not neg[:, :10].any() and not neg[:, 40:].any()
    # each element is drawn with its probability 2/10 or 6/30 = 0.2, within 5 standard deviations
    tolerance = 5 * (draws * 0.2 * 0.8) ** 0.5
    assert (pos[:, :10].sum(0).float() - 0.2 * draws).abs().max() < tolerance
    assert (neg[:, 10:40].sum(0).float() - 0.2 * draws).abs().max() < tolerance
    # and every pair of positives is equally likely (a uniform subset, not only uniform marginals)
    chosen = pos[:, :10].nonzero()[:, 1].view(draws, 2)
    pairs = torch.bincount(chosen[:, 0] * 10 + chosen[:, 1], minlength=100).view(10, 10)
    expected = draws / 45
    assert (pairs.triu(1)[pairs.triu(1) > 0].float() - expected).abs().max() < 5 * expected**0.5
    assert int((pairs.triu(1) > 0).sum()) == 45


def test_seeded_draws_are_deterministic():
    labels = [_labels(1, 500), _labels(2, 300)]
    sampler = BalancedPositiveNegativeSampler(64, 0.25)
    torch.manual_seed(7)
    first = sampler(labels)
    torch.manual_seed(7)
    second = sampler(labels)
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        assert torch.equal(a, b)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="1.5"):
        BalancedPositiveNegativeSampler(8, 1.5)
    with pytest.raises(ValueError, match="-1"):
        BalancedPositiveNegativeSampler(-1, 0.5)
