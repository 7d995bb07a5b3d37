"""The losses of one-stage detectors: sigmoid focal loss (Lin et al., ICCV 2017) and generalized IoU loss
(Rezatofighi et al., CVPR 2019), with the same arithmetic as torchvision.ops' (tests/test_ops_losses.py)."""
import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss of independent sigmoid classifiers, per element (sum or mean it as the detector needs).

    Args:
        logits: (...) float logits.
        targets: (...) float, 1 for the positives and 0 for the negatives.
        alpha: weight of the positives (1 - alpha for the negatives); < 0 disables the weighting.
        gamma: the focusing exponent: well-classified examples are down-weighted by (1 - p_t) ** gamma.
    Returns:
        (...) the loss of each element.
    """
    p = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)  # the probability given to the true answer
    loss = cross_entropy * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def generalized_box_iou_loss(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """1 - GIoU of paired boxes, per pair.

    Args:
        boxes1, boxes2: (K, 4) xyxy, paired row by row (x2 >= x1 and y2 >= y1 expected).
        eps: keeps the quotients finite for degenerate boxes.
    Returns:
        (K,) 1 - GIoU of each pair, in [0, 2).
    """
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    inter_w = (torch.min(x2, x2g) - torch.max(x1, x1g)).clamp(min=0)
    inter_h = (torch.min(y2, y2g) - torch.max(y1, y1g)).clamp(min=0)
    intersection = inter_w * inter_h
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intersection
    iou = intersection / (union + eps)
    enclosing = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))  # (K,)
    giou = iou - ((enclosing - union) / (enclosing + eps))
    return 1 - giou
