"""Assignment of predictions (anchors or proposals) to ground-truth boxes by IoU (Ren et al., 2015, Sec. 3.1.2).

Shape shorthand: M ground-truth boxes, N predictions.
"""
import torch
from torch import Tensor


class Matcher:
    """Matches every prediction to its highest-IoU ground-truth box, or marks it as background / ignored.

    Args:
        high_threshold: predictions whose best IoU is >= this are matched to that ground truth.
        low_threshold: predictions whose best IoU is < this are BELOW_LOW_THRESHOLD (background);
            those in [low, high) are BETWEEN_THRESHOLDS (ignored by the losses).
        allow_low_quality_matches: also keep the match of every prediction that has the highest IoU of some
            ground truth (ties included), so that each ground truth gets at least one prediction even when no
            IoU reaches high_threshold (Faster R-CNN's second positive-anchor rule).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} is above high_threshold {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """Match predictions to ground truth.

        Args:
            match_quality_matrix: (M, N) float, IoU of ground truth m with prediction n.

        Returns:
            (N,) int64: the matched ground-truth index in [0, M), or BELOW_LOW_THRESHOLD (-1), or
            BETWEEN_THRESHOLDS (-2). With no ground truth (M == 0) every prediction is BELOW_LOW_THRESHOLD,
            i.e. background (torchvision raises instead).
        """
        if match_quality_matrix.dim() != 2:
            raise ValueError(
                f"match_quality_matrix must have shape (M, N), got {tuple(match_quality_matrix.shape)}"
            )
        num_gt, num_pred = match_quality_matrix.shape
        device = match_quality_matrix.device
        if num_gt == 0 or num_pred == 0:
            return torch.full((num_pred,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=device)
        # Element-wise selects only (no boolean-mask assignment): nothing here waits for the device.
        best_iou, best_gt = match_quality_matrix.max(dim=0)  # (N,), (N,) best ground truth of each prediction
        below = torch.full_like(best_gt, self.BELOW_LOW_THRESHOLD)
        between = torch.full_like(best_gt, self.BETWEEN_THRESHOLDS)
        matches = torch.where(best_iou < self.high_threshold, between, best_gt)
        matches = torch.where(best_iou < self.low_threshold, below, matches)
        if self.allow_low_quality_matches:
            best_iou_of_gt = match_quality_matrix.max(dim=1).values  # (M,)
            # every prediction that reaches some gt's best IoU (ties included) keeps its best match
            is_best = (match_quality_matrix == best_iou_of_gt[:, None]).any(dim=0)  # (N,)
            matches = torch.where(is_best, best_gt, matches)
        return matches
