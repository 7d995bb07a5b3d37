"""Drawing detections on an image: boxes, "name 0.93" labels on a filled background, a fixed colour per class,
and Mask R-CNN's masks as translucent fills of that colour under the boxes.

Shape shorthand: D detections, G ground-truth boxes. Boxes are (x1, y1, x2, y2) in absolute pixels of the image
they are drawn on (the frame `FasterRCNNFPN` returns them in); masks (D, H, W) bool in the same pixels.
`save_detection_picture` puts a model's predictions under the ground truth of a few data set images (training's
detections.png).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Mapping, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from fpn.deploy.mask_rle import binary_masks

Colour = Tuple[int, int, int]
MASK_ALPHA = 0.45  # a mask's fill: 45% its class colour over 55% the image, so the object still shows through

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
    masks=None,
) -> Image.Image:
    """Draw the detections scoring at least `score_threshold` on a copy of `image`.

    Each box gets its class colour (`colour_for_label`) and a label "name 0.93" on a filled background, placed
    above the box when there is room and inside it otherwise, and always kept inside the image. Higher scores
    are drawn last, so they stay on top. With `masks`, each drawn detection's mask is filled first, translucent
    (`MASK_ALPHA`) in its class colour, and all the boxes and labels go over the fills.

    Args:
        image: PIL image; modes other than RGB/RGBA are converted to RGB in the copy.
        boxes: (D, 4) float, xyxy in absolute pixels of `image` (a tensor, array or nested list).
        labels: (D,) int class ids.
        scores: (D,) float confidences.
        class_names: class id -> name; ids missing from it are written as the number.
        score_threshold: detections with a lower score are not drawn.
        masks: None, or (D, H, W) bool (or 0/1) masks of the detections, H x W the image's size.

    Returns:
        A new PIL image of the same size; the input is left untouched. With nothing to draw it is an exact
        copy of `image` (for RGB/RGBA input).

    Raises:
        ValueError: on mismatched lengths, boxes not of shape (D, 4), non-finite or inverted (x2 < x1) boxes,
            masks not of shape (D, H, W).
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"image: expected a PIL.Image.Image, got {type(image).__name__}")
    boxes_t, labels_t, scores_t = _as_tensors(boxes, labels, scores)
    keep = torch.nonzero(scores_t >= score_threshold).flatten()
    keep = keep[torch.argsort(scores_t[keep], stable=True)]  # ascending: best drawn last, on top
    texts = [f"{class_names.get(int(labels_t[i]), str(int(labels_t[i])))} {float(scores_t[i]):.2f}" for i in keep]
    if masks is not None:
        image = _fill_masks(image, _as_masks(masks, len(boxes_t), image.size)[keep], labels_t[keep])
    return _draw_boxes(image, boxes_t[keep], labels_t[keep], texts)


def _fill_masks(image: Image.Image, masks: torch.Tensor, labels: torch.Tensor) -> Image.Image:
    """A copy of `image` (as RGB unless RGBA) with each (H, W) mask of `masks` (D, H, W) bool filled in its label's
    colour at `MASK_ALPHA`, in order (a later mask over an earlier one); with no mask, `image` itself."""
    if len(masks) == 0:
        return image
    pixels = np.array(image if image.mode in ("RGB", "RGBA") else image.convert("RGB"))  # (H, W, 3 or 4) uint8
    rgb = pixels[..., :3].astype(np.float32)  # (H, W, 3)
    for mask, label in zip(masks.numpy(), labels.tolist()):
        rgb[mask] = rgb[mask] * (1 - MASK_ALPHA) + np.asarray(colour_for_label(label), np.float32) * MASK_ALPHA
    pixels[..., :3] = np.rint(rgb).astype(np.uint8)
    return Image.fromarray(pixels)


def _as_masks(masks, count: int, size: Tuple[int, int]) -> torch.Tensor:
    """Check masks against `count` detections on an image of `size` (W, H): a CPU (D, H, W) bool tensor."""
    masks_t = torch.as_tensor(_detach(masks))
    width, height = size
    if tuple(masks_t.shape) != (count, height, width):
        raise ValueError(f"masks: expected shape (D, H, W) = ({count}, {height}, {width}) for {count} boxes on a "
                         f"{width}x{height} image, got {tuple(masks_t.shape)}")
    return masks_t.bool()


def draw_ground_truth(image: Image.Image, boxes, labels, class_names: Mapping[int, str], masks=None) -> Image.Image:
    """Draw ground-truth boxes on a copy of `image`, like `draw_detections` but labelled with the name alone.

    Args:
        image: PIL image; modes other than RGB/RGBA are converted to RGB in the copy.
        boxes: (G, 4) float, xyxy in absolute pixels of `image`.
        labels: (G,) int class ids; ids missing from `class_names` are written as the number.
        class_names: class id -> name.
        masks: None, or (G, H, W) bool (or 0/1) instance masks, filled as `draw_detections` fills them.

    Returns:
        A new PIL image of the same size.

    Raises:
        ValueError: as `draw_detections`.
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"image: expected a PIL.Image.Image, got {type(image).__name__}")
    labels = torch.as_tensor(_detach(labels)).reshape(-1)
    boxes_t, labels_t, _ = _as_tensors(boxes, labels, torch.ones(labels.numel()))
    texts = [class_names.get(label, str(label)) for label in labels_t.tolist()]
    if masks is not None:
        image = _fill_masks(image, _as_masks(masks, len(boxes_t), image.size), labels_t)
    return _draw_boxes(image, boxes_t, labels_t, texts)


def _draw_boxes(image: Image.Image, boxes: torch.Tensor, labels: torch.Tensor, texts: List[str]) -> Image.Image:
    """A copy of `image` with each (D, 4) xyxy box outlined in its label's colour and its text above it."""
    out = image.copy() if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    if len(texts) == 0:
        return out
    draw = ImageDraw.Draw(out)
    width, height = out.size
    line_width = line_width_for(width, height)
    font = _font(font_size_for(width, height))
    for box, label, text in zip(boxes.tolist(), labels.tolist(), texts):
        x1, y1, x2, y2 = box
        # Clip to the image so a box reaching past the border still shows its edges there.
        x1, x2 = (min(max(v, 0.0), width - 1.0) for v in (x1, x2))
        y1, y2 = (min(max(v, 0.0), height - 1.0) for v in (y1, y2))
        colour = colour_for_label(label)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line_width)
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


@torch.no_grad()
def save_detection_picture(
    model: nn.Module,
    dataset,
    path: Union[str, Path],
    *,
    device: torch.device,
    num_images: int = 4,
    score_threshold: float = 0.5,
) -> Path:
    """Draw the first `num_images` images of `dataset`, each as a column: ground truth above, predictions below.

    The panels are titled "ground truth" and "predictions (score >= 0.5)"; a box has its class's colour in both,
    so a missed or a wrong detection shows at a glance. Masks are drawn where there are some: a Mask R-CNN's
    predictions, a data set's targets with `masks`.

    Args:
        model: the detector (not DDP-wrapped); its train/eval mode is restored afterwards.
        dataset: yields (image float (3, H, W) in [0, 1], target dict with "boxes" (G, 4) xyxy in the image's
            pixels and "labels" (G,), optionally "masks" (G, H, W)); has `class_names` {label: name}.
        path: the PNG to write (its folder is created).
        device: where the model runs.
        num_images: how many images (fewer if the dataset is smaller).
        score_threshold: detections below this score are not drawn.
    Returns:
        Path of the written picture.
    Raises:
        ValueError: the dataset has no images.
    """
    was_training = model.training
    model.eval()
    columns = []
    try:
        for index in range(min(num_images, len(dataset))):
            image, target = dataset[index]
            detections = model([image.to(device)])[0]
            picture = Image.fromarray((image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy())
            truth = draw_ground_truth(picture, target.get("boxes", torch.zeros(0, 4)),
                                      target.get("labels", torch.zeros(0, dtype=torch.int64)), dataset.class_names,
                                      masks=target.get("masks"))
            masks = binary_masks(detections["masks"]).cpu() if "masks" in detections else None  # (D, H, W)
            predicted = draw_detections(picture, detections["boxes"].float().cpu(), detections["labels"].cpu(),
                                        detections["scores"].float().cpu(), dataset.class_names,
                                        score_threshold=score_threshold, masks=masks)
            columns.append((truth, predicted))
    finally:
        model.train(was_training)
    if not columns:
        raise ValueError("the dataset has no images to draw")
    canvas = _panel_grid(columns, ("ground truth", f"predictions (score >= {score_threshold:g})"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _panel_grid(columns: List[Tuple[Image.Image, ...]], titles: Sequence[str], gap: int = 8) -> Image.Image:
    """Columns of panels on white, row r of every column under `titles[r]`; a column is as wide as its title."""
    size = max(14, font_size_for(max(p.width for c in columns for p in c), max(p.height for c in columns for p in c)))
    font = _font(size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    extents = [measure.textbbox((0, 0), title, font=font) for title in titles]  # (left, top, right, bottom)
    title_height = max(bottom for _, _, _, bottom in extents) + 4
    widths = [max(max(right for _, _, right, _ in extents), *(panel.width for panel in column)) for column in columns]
    heights = [title_height + max(column[row].height for column in columns) for row in range(len(titles))]
    canvas = Image.new("RGB", (sum(widths) + gap * (len(columns) - 1), sum(heights) + gap * (len(titles) - 1)),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for column, width in zip(columns, widths):
        y = 0
        for title, panel, height in zip(titles, column, heights):
            draw.text((x, y), title, fill=(0, 0, 0), font=font)
            canvas.paste(panel.convert("RGB"), (x, y + title_height))
            y += height + gap
        x += width + gap
    return canvas
