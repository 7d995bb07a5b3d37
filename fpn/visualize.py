"""Drawing detections on an image: boxes, "name 0.93" labels on a filled background, a fixed colour per class.

Shape shorthand: D detections. Boxes are (x1, y1, x2, y2) in absolute pixels of the image they are drawn on
(the frame `FasterRCNNFPN` returns them in).
"""
from __future__ import annotations

import functools
from typing import Mapping, Tuple

import torch
from PIL import Image, ImageDraw, ImageFont

Colour = Tuple[int, int, int]

# 20 well-separated colours (Tableau 20 order: dark and light hue pairs), chosen by `label % 20`, so a class
# keeps its colour from image to image.
PALETTE: Tuple[Colour, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)


def colour_for_label(label: int) -> Colour:
    """The palette colour of a class id (the same id always gets the same colour)."""
    return PALETTE[int(label) % len(PALETTE)]


def text_colour_for(background: Colour) -> Colour:
    """Black or white, whichever contrasts more with `background` (WCAG relative luminance)."""

    def linear(channel: int) -> float:
        c = channel / 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in background)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # Contrast against black is (L + 0.05) / 0.05, against white 1.05 / (L + 0.05); they are equal at L ~ 0.179.
    return (0, 0, 0) if luminance > 0.179 else (255, 255, 255)


def line_width_for(width: int, height: int) -> int:
    """Box outline width in pixels: ~1/300 of the shorter side, at least 1 (2 px on a 640x480 photo)."""
    return max(1, round(min(width, height) / 300))


def font_size_for(width: int, height: int) -> int:
    """Label font size in pixels: ~1/40 of the shorter side, between 10 and 40."""
    return int(min(40, max(10, round(min(width, height) / 40))))


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable font, Pillow >= 10.1 with FreeType
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()  # fixed-size bitmap font


def draw_detections(
    image: Image.Image,
    boxes,
    labels,
    scores,
    class_names: Mapping[int, str],
    score_threshold: float = 0.5,
) -> Image.Image:
    """Draw the detections scoring at least `score_threshold` on a copy of `image`.

    Each box gets its class colour (`colour_for_label`) and a label "name 0.93" on a filled background, placed
    above the box when there is room and inside it otherwise, and always kept inside the image. Higher scores
    are drawn last, so they stay on top.

    Args:
        image: PIL image; modes other than RGB/RGBA are converted to RGB in the copy.
        boxes: (D, 4) float, xyxy in absolute pixels of `image` (a tensor, array or nested list).
        labels: (D,) int class ids.
        scores: (D,) float confidences.
        class_names: class id -> name; ids missing from it are written as the number.
        score_threshold: detections with a lower score are not drawn.

    Returns:
        A new PIL image of the same size; the input is left untouched. With nothing to draw it is an exact
        copy of `image` (for RGB/RGBA input).

    Raises:
        ValueError: on mismatched lengths, boxes not of shape (D, 4), non-finite or inverted (x2 < x1) boxes.
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"image: expected a PIL.Image.Image, got {type(image).__name__}")
    boxes_t, labels_t, scores_t = _as_tensors(boxes, labels, scores)
    out = image.copy() if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    keep = torch.nonzero(scores_t >= score_threshold).flatten()
    if keep.numel() == 0:
        return out
    keep = keep[torch.argsort(scores_t[keep], stable=True)]  # ascending: best drawn last, on top
    draw = ImageDraw.Draw(out)
    width, height = out.size
    line_width = line_width_for(width, height)
    font = _font(font_size_for(width, height))
    for i in keep.tolist():
        x1, y1, x2, y2 = boxes_t[i].tolist()
        # Clip to the image so a box reaching past the border still shows its edges there.
        x1, x2 = (min(max(v, 0.0), width - 1.0) for v in (x1, x2))
        y1, y2 = (min(max(v, 0.0), height - 1.0) for v in (y1, y2))
        label = int(labels_t[i])
        colour = colour_for_label(label)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line_width)
        text = f"{class_names.get(label, str(label))} {float(scores_t[i]):.2f}"
        _draw_label(draw, text, (x1, y1), colour, font, (width, height))
    return out


def _draw_label(
    draw: ImageDraw.ImageDraw,
    text: str,
    anchor: Tuple[float, float],
    colour: Colour,
    font: ImageFont.ImageFont,
    image_size: Tuple[int, int],
) -> None:
    """Text on a filled rectangle whose bottom-left sits on the box's top-left corner, shifted into the image."""
    width, height = image_size
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 2
    label_w = right - left + 2 * pad
    label_h = bottom - top + 2 * pad
    x, y = anchor
    y = y - label_h if y - label_h >= 0 else y  # above the box, or inside it at the top edge
    x = min(max(x, 0.0), max(width - label_w, 0.0))
    y = min(max(y, 0.0), max(height - label_h, 0.0))
    draw.rectangle((x, y, x + label_w - 1, y + label_h - 1), fill=colour)
    draw.text((x + pad - left, y + pad - top), text, fill=text_colour_for(colour), font=font)


def _as_tensors(boxes, labels, scores) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate detections and bring them to CPU tensors: (D, 4) float, (D,) int64, (D,) float."""
    boxes_t = torch.as_tensor(_detach(boxes), dtype=torch.float64)
    if boxes_t.numel() == 0:
        boxes_t = boxes_t.reshape(0, 4)  # [] or an empty (0,) tensor: no detections
    elif boxes_t.dim() != 2 or boxes_t.shape[1] != 4:
        raise ValueError(f"boxes: expected shape (D, 4), got {tuple(boxes_t.shape)}")
    labels_t = torch.as_tensor(_detach(labels)).reshape(-1).to(torch.int64)
    scores_t = torch.as_tensor(_detach(scores), dtype=torch.float64).reshape(-1)
    n = boxes_t.shape[0]
    if labels_t.numel() != n or scores_t.numel() != n:
        raise ValueError(
            f"boxes, labels and scores must have the same length, got {n}, {labels_t.numel()}, {scores_t.numel()}"
        )
    if not torch.isfinite(boxes_t).all():
        bad = torch.nonzero(~torch.isfinite(boxes_t).all(dim=1)).flatten()[0].item()
        raise ValueError(f"boxes: box {bad} is not finite: {boxes_t[bad].tolist()}")
    inverted = (boxes_t[:, 2] < boxes_t[:, 0]) | (boxes_t[:, 3] < boxes_t[:, 1])
    if inverted.any():
        bad = torch.nonzero(inverted).flatten()[0].item()
        raise ValueError(f"boxes: box {bad} has x2 < x1 or y2 < y1: {boxes_t[bad].tolist()}")
    return boxes_t, labels_t, scores_t


def _detach(values):
    return values.detach().cpu() if isinstance(values, torch.Tensor) else values
