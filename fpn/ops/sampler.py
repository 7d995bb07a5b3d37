"""Sampling of a fixed-size, class-balanced minibatch of anchors or RoIs per image (Ren et al., 2015, Sec. 3.1.3)."""
from typing import List, Tuple

import torch
from torch import Tensor


class BalancedPositiveNegativeSampler:
    """Draws up to `batch_size_per_image` labels per image, at most a `positive_fraction` of them positive.

    Positives and negatives are drawn uniformly at random with torch.randperm on the labels' device, in the same
    order of random calls as torchvision's sampler, so a seeded run selects the same elements.

    Args:
        batch_size_per_image: number of elements sampled per image (fewer when an image lacks negatives).
        positive_fraction: upper bound of the fraction of positives in a sampled batch.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        if batch_size_per_image < 0:
            raise ValueError(f"batch_size_per_image must be >= 0, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, matched_labels: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Sample positives and negatives of every image.

        Args:
            matched_labels: per image, (Ni,) int64 labels: >= 1 positive, 0 negative, -1 ignored.

        Returns:
            (pos_masks, neg_masks): per image, (Ni,) bool masks of the sampled positives and negatives.
        """
        pos_masks, neg_masks = [], []
        for labels in matched_labels:
            positive = torch.where(labels >= 1)[0]
            negative = torch.where(labels == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            chosen_pos = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
            chosen_neg = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
            pos_mask = torch.zeros_like(labels, dtype=torch.bool)
            neg_mask = torch.zeros_like(labels, dtype=torch.bool)
            pos_mask[chosen_pos] = True
            neg_mask[chosen_neg] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks
