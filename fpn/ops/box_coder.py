"""Box regression targets: encode ground-truth boxes relative to reference boxes, and decode them back.

The parameterisation is that of R-CNN / Faster R-CNN (Ren et al., 2015, Eq. 2):
    dx = wx * (gx - px) / pw,  dy = wy * (gy - py) / ph,  dw = ww * log(gw / pw),  dh = wh * log(gh / ph)
with (px, py, pw, ph) the centre and size of the reference box (anchor or proposal) and (gx, gy, gw, gh) those of
the target. Widths are x2 - x1 and centres x1 + 0.5 * w, exactly as torchvision's BoxCoder.
Shape shorthand: N boxes, K classes (K = 1 for the RPN).
"""
import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from fpn.ops.boxes import check_boxes


def _centres_and_sizes(boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    # (N, 4) xyxy -> four (N,) tensors: centre x, centre y, width, height
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights, widths, heights


class BoxCoder:
    """Encodes boxes as (dx, dy, dw, dh) deltas to reference boxes and decodes deltas back to boxes.

    Args:
        weights: (wx, wy, ww, wh) multipliers of the deltas: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the
            box head.
        bbox_xform_clip: upper clamp of dw and dh before exp() when decoding, so that a wild prediction cannot
            overflow (default log(1000 / 16), as in Detectron).
    """

    def __init__(self, weights: Sequence[float], bbox_xform_clip: float = math.log(1000.0 / 16)):
        if len(weights) != 4:
            raise ValueError(f"weights must be (wx, wy, ww, wh), got {tuple(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, reference_boxes: List[Tensor], proposals: List[Tensor]) -> Tuple[Tensor, ...]:
        """Encode per-image lists of target boxes relative to per-image proposals.

        Args:
            reference_boxes: per image, (Ni, 4) float target boxes (x1, y1, x2, y2).
            proposals: per image, (Ni, 4) float boxes the targets are expressed relative to.

        Returns:
            per image, (Ni, 4) deltas (dx, dy, dw, dh) in the proposals' dtype.
        """
        if len(reference_boxes) != len(proposals):
            raise ValueError(
                f"encode got {len(reference_boxes)} images of reference boxes but {len(proposals)} of proposals"
            )
        counts = [len(b) for b in reference_boxes]
        deltas = self.encode_single(torch.cat(reference_boxes, dim=0), torch.cat(proposals, dim=0))
        return deltas.split(counts, dim=0)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Encode target boxes relative to proposals, pair by pair.

        Args:
            reference_boxes: (N, 4) float target boxes (x1, y1, x2, y2).
            proposals: (N, 4) float boxes the targets are expressed relative to.

        Returns:
            (N, 4) deltas (dx, dy, dw, dh) in the proposals' dtype.
        """
        check_boxes(reference_boxes, "reference_boxes")
        check_boxes(proposals, "proposals")
        if reference_boxes.shape != proposals.shape:
            raise ValueError(
                f"reference_boxes {tuple(reference_boxes.shape)} and proposals {tuple(proposals.shape)} differ"
            )
        wx, wy, ww, wh = self.weights
        reference_boxes = reference_boxes.to(proposals.dtype)
        px, py, pw, ph = _centres_and_sizes(proposals)
        gx, gy, gw, gh = _centres_and_sizes(reference_boxes)
        dx = wx * (gx - px) / pw
        dy = wy * (gy - py) / ph
        dw = ww * torch.log(gw / pw)
        dh = wh * torch.log(gh / ph)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, rel_codes: Tensor, boxes: List[Tensor]) -> Tensor:
        """Apply deltas to per-image lists of reference boxes.

        Args:
            rel_codes: (sumN, K*4) float deltas, rows in the order of the concatenated `boxes`.
            boxes: per image, (Ni, 4) float reference boxes (x1, y1, x2, y2).

        Returns:
            (sumN, K, 4) decoded boxes (x1, y1, x2, y2) in rel_codes' dtype.
        """
        concat_boxes = torch.cat(boxes, dim=0)  # (sumN, 4)
        total = concat_boxes.shape[0]
        if rel_codes.shape[0] != total:
            raise ValueError(f"rel_codes has {rel_codes.shape[0]} rows but boxes hold {total} boxes")
        if rel_codes.dim() != 2:
            rel_codes = rel_codes.reshape(total, -1)
        pred = self.decode_single(rel_codes, concat_boxes)  # (sumN, K*4)
        return pred.reshape(total, pred.shape[1] // 4, 4)

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """Apply deltas to reference boxes.

        Args:
            rel_codes: (N, K*4) float deltas (dx, dy, dw, dh) per class.
            boxes: (N, 4) float reference boxes (x1, y1, x2, y2).

        Returns:
            (N, K*4) decoded boxes (x1, y1, x2, y2) per class, in rel_codes' dtype.
        """
        check_boxes(boxes, "boxes")
        if rel_codes.dim() != 2 or rel_codes.shape[1] % 4 != 0 or rel_codes.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"rel_codes must have shape (N, K*4) with N = {boxes.shape[0]} boxes, got {tuple(rel_codes.shape)}"
            )
        boxes = boxes.to(rel_codes.dtype)
        wx, wy, ww, wh = self.weights
        px, py, pw, ph = _centres_and_sizes(boxes)  # (N,) each
        dx = rel_codes[:, 0::4] / wx  # (N, K)
        dy = rel_codes[:, 1::4] / wy
        dw = (rel_codes[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (rel_codes[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)
        cx = dx * pw[:, None] + px[:, None]  # (N, K)
        cy = dy * ph[:, None] + py[:, None]
        half_w = 0.5 * torch.exp(dw) * pw[:, None]
        half_h = 0.5 * torch.exp(dh) * ph[:, None]
        pred = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=2)  # (N, K, 4)
        return pred.flatten(1)


class DistanceBoxCoder:
    """FCOS's box coding: a box as the distances (l, t, r, b) from a location (the centre of a reference box)
    to its four sides, divided by the reference box's width and height (torchvision's BoxLinearCoder with
    normalize_by_size=True; the reference boxes are the per-level "anchors" of side = stride)."""

    def encode(self, reference: Tensor, boxes: Tensor) -> Tensor:
        """(..., 4) reference boxes and (..., 4) boxes xyxy -> (..., 4) normalised (l, t, r, b)."""
        ctr_x = 0.5 * (reference[..., 0] + reference[..., 2])
        ctr_y = 0.5 * (reference[..., 1] + reference[..., 3])
        distances = torch.stack(
            (ctr_x - boxes[..., 0], ctr_y - boxes[..., 1], boxes[..., 2] - ctr_x, boxes[..., 3] - ctr_y), dim=-1)
        width, height = reference[..., 2] - reference[..., 0], reference[..., 3] - reference[..., 1]
        return distances / torch.stack((width, height, width, height), dim=-1)

    def decode(self, codes: Tensor, reference: Tensor) -> Tensor:
        """(..., 4) normalised (l, t, r, b) and (..., 4) reference boxes -> (..., 4) boxes xyxy, in codes' dtype."""
        reference = reference.to(codes.dtype)
        ctr_x = 0.5 * (reference[..., 0] + reference[..., 2])
        ctr_y = 0.5 * (reference[..., 1] + reference[..., 3])
        width, height = reference[..., 2] - reference[..., 0], reference[..., 3] - reference[..., 1]
        codes = codes * torch.stack((width, height, width, height), dim=-1)
        return torch.stack(
            (ctr_x - codes[..., 0], ctr_y - codes[..., 1], ctr_x + codes[..., 2], ctr_y + codes[..., 3]), dim=-1)
