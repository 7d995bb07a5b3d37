"""A synthetic COCO-format shapes data set: the embedded default data of the CPU demo and of the tests.

    python -m fpn.data.synthetic OUT --num-images 600            # OUT/{train2017,val2017}/*.png + OUT/annotations

Each image (default 256..320 px a side, landscape and portrait, sides never a multiple of 32) has a textured
background (a random two-colour gradient, smooth blotches, a few thin distractor strokes, pixel noise) and 1..6
filled shapes. A class is a shape ("circle", "square", "triangle", "cross", "ring", "diamond", then "star",
"hexagon"), drawn in a random colour with a random aspect ratio, so the shape and not the colour tells the class.
Object sizes (the longer box side) are log-uniform from 12 px to 60 % of the shorter image side by default
(`min_object_size`, `max_object_fraction`), so small objects are common and the pyramid matters. Later shapes
may cover earlier ones, but every shape keeps >= 75 % of its pixels visible.
A box is the tight bound of the visible pixels of its shape (pixel edges: a shape covering columns 3..7 has
x1 = 3, x2 = 8), `segmentation` is exactly those visible pixels as a compressed RLE (pycocotools' `mask.encode`,
counts as a str), and `area` is their count, i.e. the mask's area, as COCO defines it.

The output is deterministic for a seed, byte for byte (numpy Generator per image, PNG files, fixed json).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

SHAPE_NAMES = ("circle", "square", "triangle", "cross", "ring", "diamond", "star", "hexagon")
MIN_OBJECT_SIZE = 12  # px, longer side of the smallest shape
MAX_OBJECT_FRACTION = 0.6  # largest shape: this fraction of the shorter image side
MIN_VISIBLE_FRACTION = 0.75  # occlusion limit: a shape keeps at least this fraction of its pixels
_SPLITS = (("train2017", 0), ("val2017", 1))  # folder name, the split's code in the per-image seed


def generate_synthetic_coco(
    out_dir: Union[str, os.PathLike],
    num_images: int,
    num_val: Optional[int] = None,
    seed: int = 0,
    min_size: int = 256,
    max_size: int = 320,
    num_classes: int = 6,
    max_objects: int = 6,
    progress: bool = True,
    min_object_size: int = MIN_OBJECT_SIZE,
    max_object_fraction: float = MAX_OBJECT_FRACTION,
) -> Dict[str, Path]:
    """Write the synthetic data set in the COCO layout and return its paths.

    Args:
        out_dir: root folder (created; existing files of the same names are overwritten).
        num_images: training images (>= 1).
        num_val: validation images (>= 1); default max(16, num_images // 8).
        seed: non-negative seed; the same arguments give byte-identical files.
        min_size, max_size: range of each image side in px (32 <= min_size <= max_size).
        num_classes: how many shape classes, 1..len(SHAPE_NAMES); category ids are 1..num_classes.
        max_objects: shapes per image are drawn uniformly from 1..max_objects.
        progress: show a tqdm progress bar.
        min_object_size: longer side of the smallest shape, px (>= 3).
        max_object_fraction: longer side of the largest shape as a fraction of the image's shorter side, in
            (0, 1]; min_object_size must not exceed it on the smallest image (min_object_size <= fraction *
            min_size).

    Returns:
        dict of Paths: "root", "train_images", "val_images", "train_annotations", "val_annotations".
    """
    num_val = max(16, num_images // 8) if num_val is None else num_val
    _check_arguments(num_images, num_val, seed, min_size, max_size, num_classes, max_objects)
    _check_object_sizes(min_object_size, max_object_fraction, min_size)
    sizes = (min_object_size, max_object_fraction)
    root = Path(out_dir)
    paths = {"root": root}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {"train2017": num_images, "val2017": num_val}
    bar = tqdm(total=num_images + num_val, desc="synthetic images", unit="img", disable=not progress)
    for split, split_code in _SPLITS:
        image_dir = root / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, counts[split] + 1):
            rng = np.random.default_rng([seed, split_code, image_id])
            width, height = _image_size(rng, min_size, max_size)
            pixels, objects = render_image(rng, width, height, num_classes, max_objects, *sizes)
            file_name = f"{image_id:012d}.png"
            Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for category_id, bbox, area, segmentation in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                    "bbox": bbox, "area": area, "iscrowd": 0, "segmentation": segmentation})
            bar.update(1)
        json_path = root / "annotations" / f"instances_{split}.json"
        _write_json(json_path, _coco_document(images, annotations, num_classes, seed))
        key = split[: -len("2017")]
        paths[f"{key}_images"], paths[f"{key}_annotations"] = image_dir, json_path
    bar.close()
    return paths


def render_image(
    rng: np.random.Generator, width: int, height: int, num_classes: int, max_objects: int = 6,
    min_object_size: int = MIN_OBJECT_SIZE, max_object_fraction: float = MAX_OBJECT_FRACTION,
) -> Tuple[np.ndarray, List[Tuple[int, List[int], int, Dict[str, object]]]]:
    """Draw one image; object sizes as in `generate_synthetic_coco`.

    Returns:
        (pixels uint8 (height, width, 3), objects: list of (category_id, bbox [x, y, w, h] ints, visible area,
        segmentation: compressed RLE {"size": [height, width], "counts": str} of the visible pixels)).
    """
    canvas = _background(rng, width, height)  # (H, W, 3) float32
    owner = np.zeros((height, width), dtype=np.int16)  # index + 1 of the shape on top at each pixel, 0: none
    categories: List[int] = []
    full_areas: List[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        category_id = int(rng.integers(1, num_classes + 1))
        placed = _place_shape(rng, owner, full_areas, SHAPE_NAMES[category_id - 1],
                              (min_object_size, max_object_fraction))
        if placed is None:
            continue  # no placement with light enough occlusion
        x0, y0, mask = placed
        region = canvas[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
        region[mask] = _contrasting_colour(rng, region.reshape(-1, 3).mean(axis=0))
        owner[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask] = len(categories) + 1
        categories.append(category_id)
        full_areas.append(int(mask.sum()))
    canvas += rng.normal(0.0, 5.0, size=canvas.shape).astype(np.float32)  # sensor-like noise on everything
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return pixels, _visible_boxes(owner, categories)


def _visible_boxes(
    owner: np.ndarray, categories: Sequence[int]
) -> List[Tuple[int, List[int], int, Dict[str, object]]]:
    """Per shape: (category_id, tight box xywh, visible pixel count, compressed RLE of the visible pixels)."""
    objects = []
    for index, category_id in enumerate(categories, start=1):
        visible = owner == index  # (H, W) bool
        ys, xs = np.nonzero(visible)
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1  # xyxy, pixel edges
        rle = mask_utils.encode(np.asfortranarray(visible, dtype=np.uint8))  # pycocotools wants column-major
        segmentation = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        objects.append((category_id, [x1, y1, x2 - x1, y2 - y1], int(xs.size), segmentation))
    return objects


def _place_shape(
    rng: np.random.Generator, owner: np.ndarray, full_areas: List[int], shape: str,
    size_range: Tuple[int, float] = (MIN_OBJECT_SIZE, MAX_OBJECT_FRACTION), attempts: int = 20,
) -> Optional[Tuple[int, int, np.ndarray]]:
    """Pick a size (size_range: smallest longer side px, largest as a fraction of the shorter image side) and a
    position whose mask leaves every earlier shape >= MIN_VISIBLE_FRACTION visible."""
    height, width = owner.shape
    visible = np.bincount(owner.ravel(), minlength=len(full_areas) + 1)  # visible pixels per shape index
    smallest, fraction = size_range
    longest = math.exp(rng.uniform(math.log(smallest), math.log(fraction * min(height, width))))
    aspect = math.exp(rng.uniform(math.log(0.75), math.log(4 / 3)))  # box width / height
    box_w = max(3, round(longest if aspect >= 1 else longest * aspect))
    box_h = max(3, round(longest / aspect if aspect >= 1 else longest))
    mask = shape_mask(shape, box_w, box_h, rng)  # (box_h, box_w) bool
    for _ in range(attempts):
        x0 = int(rng.integers(0, width - box_w + 1))
        y0 = int(rng.integers(0, height - box_h + 1))
        covered = np.bincount(owner[y0 : y0 + box_h, x0 : x0 + box_w][mask], minlength=len(visible))
        after = visible[1:] - covered[1:]
        if np.all(after >= MIN_VISIBLE_FRACTION * np.asarray(full_areas, dtype=np.float64)):
            return x0, y0, mask
    return None


def shape_mask(shape: str, w: int, h: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Rasterise one shape so that it touches all four sides of a w x h box.

    Args:
        shape: one of SHAPE_NAMES.
        w, h: box size in px (>= 3).
        rng: draws the triangle's orientation (apex up or down); None: apex up.

    Returns:
        bool mask (h, w), True on the shape.
    """
    image = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(image)
    r, b = w - 1, h - 1  # right and bottom pixel
    cx, cy = r / 2, b / 2
    if shape == "circle":
        draw.ellipse([0, 0, r, b], fill=255)
    elif shape == "square":
        draw.rectangle([0, 0, r, b], fill=255)
    elif shape == "triangle":
        apex_up = rng is None or bool(rng.integers(0, 2))
        draw.polygon([(cx, 0), (0, b), (r, b)] if apex_up else [(0, 0), (r, 0), (cx, b)], fill=255)
    elif shape == "cross":
        half = max(1.0, 0.16 * min(w, h))  # half the bar thickness
        draw.rectangle([0, cy - half, r, cy + half], fill=255)
        draw.rectangle([cx - half, 0, cx + half, b], fill=255)
    elif shape == "ring":
        inset = max(2.0, 0.25 * min(w, h))  # ring thickness
        draw.ellipse([0, 0, r, b], fill=255)
        if min(r, b) - 2 * inset >= 1:  # too small a box leaves no room for the hole
            draw.ellipse([inset, inset, r - inset, b - inset], fill=0)
    elif shape == "diamond":
        draw.polygon([(cx, 0), (r, cy), (cx, b), (0, cy)], fill=255)
    elif shape in ("star", "hexagon"):
        corners, inner = (10, 0.45) if shape == "star" else (6, 1.0)
        angles = -math.pi / 2 + 2 * math.pi * np.arange(corners) / corners
        radii = np.where(np.arange(corners) % 2 == 0, 1.0, inner)
        xs, ys = radii * np.cos(angles), radii * np.sin(angles)
        xs = (xs - xs.min()) / np.ptp(xs) * r  # stretch the unit polygon onto the box
        ys = (ys - ys.min()) / np.ptp(ys) * b
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; known shapes are {SHAPE_NAMES}")
    return np.asarray(image) > 0


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Gradient + smooth blotches + thin strokes; float32 (H, W, 3) in about [0, 255]."""
    start, end = rng.uniform(40, 215, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = (ramp - ramp.min()) / np.float32(max(float(np.ptp(ramp)), 1.0))  # (H, W) in [0, 1]
    canvas = start + ramp[..., None] * (end - start)  # (H, W, 3)
    coarse = rng.uniform(-30, 30, size=(3, max(2, height // 24), max(2, width // 24))).astype(np.float32)
    for c in range(3):
        blotch = Image.fromarray(coarse[c], mode="F").resize((width, height), Image.Resampling.BILINEAR)
        canvas[..., c] += np.asarray(blotch)
    image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(int(rng.integers(2, 4)))]
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.line(points, fill=colour, width=int(rng.integers(1, 4)))
    return np.asarray(image, dtype=np.float32).copy()


def _contrasting_colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    """A random RGB colour at L1 distance >= 150 from the local background mean."""
    for _ in range(16):
        colour = rng.integers(0, 256, size=3).astype(np.float32)
        if np.abs(colour - background_mean).sum() >= 150:
            return colour
    return np.where(background_mean > 127, 0.0, 255.0).astype(np.float32)  # the opposite corner of the cube


def _image_size(rng: np.random.Generator, min_size: int, max_size: int) -> Tuple[int, int]:
    sides = []
    for _ in range(2):
        side = int(rng.integers(min_size, max_size + 1))
        if side % 32 == 0:  # keep sides off multiples of 32, so padding to the stride is always exercised
            side = side + 1 if side + 1 <= max_size else side - 1
        sides.append(side)
    return sides[0], sides[1]  # (width, height)


def _coco_document(images: List[dict], annotations: List[dict], num_classes: int, seed: int) -> dict:
    return {
        "info": {"description": f"fpn synthetic shapes (seed {seed})", "version": "1.0", "year": 2017,
                 "contributor": "fpn", "url": "", "date_created": "2017-01-01"},
        "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": [{**img, "license": 1} for img in images],
        "annotations": annotations,
        "categories": [{"id": k, "name": SHAPE_NAMES[k - 1], "supercategory": "shape"}
                       for k in range(1, num_classes + 1)],
    }


def _write_json(path: Path, document: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, separators=(",", ":"))


def _check_arguments(num_images, num_val, seed, min_size, max_size, num_classes, max_objects) -> None:
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if num_val < 1:
        raise ValueError(f"num_val must be >= 1, got {num_val}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not 32 <= min_size <= max_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    if not 1 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPE_NAMES)}, got {num_classes}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")


def _check_object_sizes(min_object_size: int, max_object_fraction: float, min_size: int) -> None:
    if min_object_size < 3:
        raise ValueError(f"min_object_size must be >= 3 px, got {min_object_size}")
    if not 0 < max_object_fraction <= 1:
        raise ValueError(f"max_object_fraction must be in (0, 1], got {max_object_fraction}")
    if min_object_size > max_object_fraction * min_size:
        raise ValueError(f"min_object_size {min_object_size} px exceeds the largest object on the smallest image "
                         f"(max_object_fraction {max_object_fraction} x min_size {min_size} px)")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    parser = argparse.ArgumentParser(description="Write the synthetic shapes data set in the COCO layout.")
    parser.add_argument("out", help="output root: OUT/train2017, OUT/val2017, OUT/annotations")
    parser.add_argument("--num-images", type=int, required=True, help="training images")
    parser.add_argument("--num-val", type=int, default=None, help="validation images (default max(16, N // 8))")
    parser.add_argument("--seed", type=int, default=0, help="seed; the same seed gives identical files")
    parser.add_argument("--min-size", type=int, default=256, help="smallest image side, px")
    parser.add_argument("--max-size", type=int, default=320, help="largest image side, px")
    parser.add_argument("--num-classes", type=int, default=6, help=f"shape classes, 1..{len(SHAPE_NAMES)}")
    parser.add_argument("--max-objects", type=int, default=6, help="shapes per image: 1..this")
    parser.add_argument("--min-object-size", type=int, default=MIN_OBJECT_SIZE,
                        help="longer side of the smallest shape, px")
    parser.add_argument("--max-object-fraction", type=float, default=MAX_OBJECT_FRACTION,
                        help="longer side of the largest shape, as a fraction of the image's shorter side")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        paths = generate_synthetic_coco(
            args.out, args.num_images, num_val=args.num_val, seed=args.seed, min_size=args.min_size,
            max_size=args.max_size, num_classes=args.num_classes, max_objects=args.max_objects,
            progress=not args.no_progress, min_object_size=args.min_object_size,
            max_object_fraction=args.max_object_fraction,
        )
    except ValueError as err:
        parser.error(str(err))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


if __name__ == "__main__":
    main()
