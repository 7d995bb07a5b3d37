"""fpn.ops.Matcher against torchvision's Matcher, including ties and low-quality matches."""
import pytest
import torch
from torchvision.models.detection._utils import Matcher as TVMatcher

from fpn.ops import Matcher


def test_thresholds_exact():
    iou = torch.tensor([[0.9, 0.5, 0.1, 0.3],
                        [0.2, 0.6, 0.0, 0.7]])  # 2 gt x 4 predictions
    matches = Matcher(0.7, 0.3)(iou)
    assert matches.dtype == torch.int64
    assert matches.tolist() == [0, Matcher.BETWEEN_THRESHOLDS, Matcher.BELOW_LOW_THRESHOLD, 1]
    assert Matcher.BELOW_LOW_THRESHOLD == -1 and Matcher.BETWEEN_THRESHOLDS == -2


def test_low_quality_matches_with_ties():
    iou = torch.tensor([[0.4, 0.4, 0.1, 0.2],
                        [0.1, 0.35, 0.2, 0.35]])
    # gt 0's best (0.4) is tied by predictions 0 and 1; gt 1's best (0.35) by predictions 1 and 3
    plain = Matcher(0.7, 0.3)(iou)
    low_quality = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    assert plain.tolist() == [-2, -2, -1, -2]
    assert low_quality.tolist() == [0, 0, -1, 1]
    assert torch.equal(low_quality, TVMatcher(0.7, 0.3, True)(iou))


@pytest.mark.parametrize("allow_low", [False, True])
def test_matches_torchvision_random(allow_low):
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        iou = (torch.rand(6, 40, generator=g) * 10).round() / 10  # coarse values create ties
        for high, low in [(0.7, 0.3), (0.5, 0.5)]:
            expected = TVMatcher(high, low, allow_low)(iou)
            assert torch.equal(Matcher(high, low, allow_low)(iou), expected)


def test_no_ground_truth_is_background():
    matches = Matcher(0.7, 0.3, True)(torch.zeros(0, 5))
    assert matches.tolist() == [-1] * 5 and matches.dtype == torch.int64


def test_no_predictions():
    assert Matcher(0.7, 0.3)(torch.zeros(3, 0)).shape == (0,)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="0.8"):
        Matcher(0.5, 0.8)
    with pytest.raises(ValueError, match="shape"):
        Matcher(0.7, 0.3)(torch.zeros(3))
