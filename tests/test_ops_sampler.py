"""fpn.ops.BalancedPositiveNegativeSampler: counts, membership, and identical draws to torchvision's sampler."""
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
def test_same_selection_as_torchvision(batch, fraction):
    labels = [_labels(1, 50), _labels(2, 30), _labels(3, 5)]
    torch.manual_seed(123)
    pos, neg = BalancedPositiveNegativeSampler(batch, fraction)(labels)
    torch.manual_seed(123)
    tv_pos, tv_neg = TVSampler(batch, fraction)(labels)
    for ours_p, ours_n, ref_p, ref_n in zip(pos, neg, tv_pos, tv_neg):
        assert torch.equal(ours_p, ref_p.bool()) and torch.equal(ours_n, ref_n.bool())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="1.5"):
        BalancedPositiveNegativeSampler(8, 1.5)
    with pytest.raises(ValueError, match="-1"):
        BalancedPositiveNegativeSampler(-1, 0.5)
