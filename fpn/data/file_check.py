"""Checking every image file of a data set before training, so a bad file is an error at start, not hours later.

    bad = check_image_files(dataset)           # [(path, reason)], nothing changed
    handle_bad_images(dataset, bad)            # skip_bad_images: drop them with a warning; else InputError
    check_dataset_images(dataset)              # both

A file is bad when it is missing, is not a regular file, is empty, has a header Pillow cannot read, or its size
(W, H after the EXIF rotation, as `load_rgb_image` delivers it) differs from the width/height the json states.
The default check opens the header only (`Image.open` reads the first few kB, no pixels), so a file whose
header is intact but whose pixel data is cut or corrupt (a truncated JPEG/PNG) passes it; `decode=True` decodes
every file fully through `load_rgb_image`, exactly as training will, and finds those too, at the cost of an
epoch's decoding (on 2 CPU cores: ~0.1 s per 1000 COCO-sized JPEGs for headers, ~4 s with decode=True).
Files are checked by a pool of threads: the header check is mostly waiting on the disk, which releases the GIL.
"""
from __future__ import annotations

import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from PIL import ExifTags, Image, UnidentifiedImageError
from tqdm import tqdm

from fpn.errors import InputError
from fpn.data.image_io import load_rgb_image, pillow_error_reason

BadImage = Tuple[Path, str]  # (file, why it is bad)

_PROGRESS_MIN_IMAGES = 2000  # smaller sets are checked in well under a second: no bar
_CHUNK = 128  # files per task: few futures for 118k files, still an even spread over the threads
_EXAMPLES = 3  # bad files named in a message
_REASON_CHARS = 100  # a reason longer than this is cut (messages stay a line or two)
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that exif_transpose turns by 90 degrees (W and H swap)


def check_image_files(dataset, *, decode: bool = False, workers: int = 8,
                      progress: bool = True) -> List[BadImage]:
    """Find the samples of `dataset` whose image file cannot be read (see the module docstring for the tests).

    Args:
        dataset: a `CocoDetection` (any object with `image_paths()` and `image_sizes()` (H, W) per sample).
        decode: fully decode every file (finds truncated or corrupt pixel data; much slower) instead of
            reading the header only.
        workers: threads reading files (>= 1).
        progress: show a tqdm bar on stderr for sets of 2000 images or more.
    Returns:
        one (path, reason) per bad sample, in sample order; empty when every file is fine.
    Raises:
        ValueError: workers < 1.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    paths, sizes = dataset.image_paths(), dataset.image_sizes()
    chunks = [range(start, min(start + _CHUNK, len(paths))) for start in range(0, len(paths), _CHUNK)]
    show = progress and len(paths) >= _PROGRESS_MIN_IMAGES
    bad: List[Tuple[int, str]] = []

    def check_chunk(chunk: range) -> List[Tuple[int, str]]:
        reasons = ((i, check_image_file(paths[i], sizes[i], decode=decode)) for i in chunk)
        return [(i, reason) for i, reason in reasons if reason is not None]

    with tqdm(total=len(paths), desc="checking images", unit="img", disable=not show) as bar, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(check_chunk, chunk): len(chunk) for chunk in chunks}
        for future in as_completed(futures):
            bad.extend(future.result())
            bar.update(futures[future])
    return [(paths[i], reason) for i, reason in sorted(bad)]


def check_image_file(path: Path, size_hw: Optional[Tuple[int, int]] = None, *,
                     decode: bool = False) -> Optional[str]:
    """Why the image file `path` cannot be used, or None if it can.

    Args:
        path: the image file.
        size_hw: the (height, width) the annotations state; None or a zero entry: not compared.
        decode: decode the pixels too (see the module docstring).
    Returns:
        a short reason ("missing", "empty file (0 bytes)", "size ... differs ...", ...) or None.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"cannot stat: {err.strerror or err}"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size == 0:
        return "empty file (0 bytes)"
    if decode:
        try:
            width, height = load_rgb_image(path).size
        except FileNotFoundError:
            return "missing"
        except ValueError as err:
            return _reason("cannot decode", err.__cause__ or err, path)
        rotated = False
    else:
        try:
            with Image.open(path) as img:
                rotated = exif_orientation(img) in TRANSPOSED_ORIENTATIONS
                width, height = img.size[::-1] if rotated else img.size
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
            return _reason("unreadable header", err, path)
    if size_hw is not None and min(size_hw) > 0 and (height, width) != tuple(size_hw):
        exif = ", after its EXIF rotation" if rotated else ""
        return (f"size {width}x{height} (W x H{exif}) differs from the annotations' "
                f"{size_hw[1]}x{size_hw[0]}")
    return None


def handle_bad_images(dataset, bad: Sequence[BadImage]) -> None:
    """Apply the data set's policy to the bad files found by `check_image_files`.

    With `dataset.skip_bad_images`, the bad samples are dropped (`dataset.drop_images`) and one warning says how
    many, naming a few. Otherwise, or when no image would be left, InputError.

    Raises:
        InputError: one line: "<N> of <M> images in <folder> cannot be read, e.g. <file>: <reason>; ...
            (and K more); fix them ...", naming at most 3 files however many are bad.
    """
    if not bad:
        return
    total, folder = len(dataset), dataset.images_dir
    if len(bad) == total and all(reason == "missing" for _, reason in bad):
        raise InputError(f"none of the {total} image files named in {dataset.annotations_file} is in {folder} "
                         f"(e.g. {_name(bad[0][0], folder)}): is that the right images folder?")
    summary = f"{len(bad)} of {total} images in {folder} cannot be read, e.g. {_examples(bad, folder)}"
    if not dataset.skip_bad_images:
        raise InputError(f"{summary}; fix them or remove them from {dataset.annotations_file}, or pass "
                         f"--skip-bad-images to leave them out")
    if len(bad) == total:
        raise InputError(f"{summary}; no image is left to use")
    bad_paths = {path for path, _ in bad}
    dataset.drop_images([i for i, path in enumerate(dataset.image_paths()) if path in bad_paths])
    warnings.warn(f"skipping bad image files: {summary}; they are left out")


def check_dataset_images(dataset, *, decode: bool = False, workers: int = 8,
                         progress: bool = True) -> List[BadImage]:
    """`check_image_files` then `handle_bad_images`: returns the bad files that were dropped (skip_bad_images).

    Raises:
        InputError: bad files and not `dataset.skip_bad_images`, or no readable file at all.
    """
    bad = check_image_files(dataset, decode=decode, workers=workers, progress=progress)
    handle_bad_images(dataset, bad)
    return bad


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1: upright) from what the header holds, without decoding the pixels."""
    # PngImageFile.getexif decodes the whole image to look for an eXIf chunk after the pixel data; the base
    # class reads only what was met before it (writers put eXIf there), which keeps the header check cheap.
    exif = Image.Image.getexif(img) if img.format == "PNG" else img.getexif()
    return int(exif.get(ExifTags.Base.Orientation, 1) or 1)


def _reason(what: str, err: BaseException, path: Path) -> str:
    if isinstance(err, UnidentifiedImageError):  # not an image at all: no "header"/"decode" prefix to add
        return pillow_error_reason(err, path)
    return f"{what}: {pillow_error_reason(err, path)}"


def _name(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _examples(bad: Sequence[BadImage], folder: Path) -> str:
    def cut(reason: str) -> str:
        return reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 3] + "..."

    named = "; ".join(f"{_name(path, folder)}: {cut(reason)}" for path, reason in bad[:_EXAMPLES])
    more = len(bad) - _EXAMPLES
    return f"{named} (and {more} more)" if more > 0 else named
