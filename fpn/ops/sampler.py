"""Sampling of a fixed-size, class-balanced minibatch of anchors or RoIs per image (Ren et al., 2015, Sec. 3.1.3)."""
from typing import List, Tuple

import torch
from torch import Tensor


class BalancedPositiveNegativeSampler:
    """Draws up to `batch_size_per_image` labels per image, at most a `positive_fraction` of them positive.

    The draw has torchvision's distribution: min(#positives, batch * fraction) positives, chosen uniformly at
    random among the positives, then min(#negatives, batch - chosen positives) negatives, uniformly among the
    negatives. It is made without reading anything on the host (no sync with an accelerator): one random
    permutation per image ranks the elements, and the first positives and negatives in that order are taken,
    how many being a count kept on the device. The random numbers differ from torchvision's sampler (which sizes
    its permutations by the counts), so the same seed selects other elements; a seeded run is deterministic.

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
        masks = [self._sample(labels) for labels in matched_labels]
        return [pos for pos, _ in masks], [neg for _, neg in masks]

    def _sample(self, labels: Tensor) -> Tuple[Tensor, Tensor]:
        n, device = labels.numel(), labels.device
        positive, negative = labels >= 1, labels == 0  # (Ni,) each
        # A uniformly random order with all positives first, then all negatives, then the ignored elements:
        # key = group * Ni + a random permutation, all keys distinct.
        group = torch.where(positive, 0, torch.where(negative, 1, 2))
        key = torch.randperm(n, device=device) + n * group
        rank = torch.empty_like(key).scatter_(0, key.argsort(), torch.arange(n, device=device))  # (Ni,)
        num_positive = positive.sum()  # 0-dim, on the device
        take_pos = num_positive.clamp(max=int(self.batch_size_per_image * self.positive_fraction))
        take_neg = torch.minimum(negative.sum(), self.batch_size_per_image - take_pos)
        # positives hold ranks [0, P), negatives [P, P + #negatives): the first `take` of each are a uniform draw
        return positive & (rank < take_pos), negative & (rank - num_positive < take_neg)
