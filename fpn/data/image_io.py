"""Decoding image files into RGB, and RGB images into tensors (Pillow + numpy, no torchvision).

Every image a detector sees goes through `load_rgb_image`, so all the odd files of real data sets end up the same:

- the EXIF orientation tag is applied (`ImageOps.exif_transpose`), so the pixels are as a viewer shows them;
- grayscale ("L", "1") is replicated to three channels;
- alpha ("LA", "RGBA", "PA", palette transparency) is DROPPED: the colour channels are kept as stored, which is
  what `Image.convert("RGB")` and torchvision's `read_image(..., ImageReadMode.RGB)` do;
- palette ("P") images are looked up in their palette;
- 16-bit grayscale ("I;16", "I;16L", "I;16B", "I;16N", and "I", which holds 16-bit PNG/TIFF data) is scaled
  linearly to 8 bit, v8 = round(v16 * 255 / 65535) (Pillow's own conversion would clip at 255 instead);
- CMYK and the other colour modes use Pillow's conversion to RGB.

A missing file raises FileNotFoundError and an unreadable one (not an image, truncated JPEG/PNG, corrupt data)
raises ValueError; both name the path. The decode is forced inside the check (`img.load()`), so a truncated
file fails here and not later in a DataLoader worker.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_rgb_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Read an image file as an 8-bit RGB Pillow image, upright per its EXIF orientation.

    Args:
        path: the image file (any format Pillow reads: JPEG, PNG, TIFF, BMP, ...).

    Returns:
        a fully decoded `PIL.Image.Image` of mode "RGB" (size (W, H) after the EXIF rotation).

    Raises:
        FileNotFoundError: the file does not exist (the message names the path).
        ValueError: the file is not a readable image or is truncated/corrupt (the message names the path).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # force the full decode here, so truncated files fail inside this try
            upright = ImageOps.exif_transpose(img)
            return to_rgb(upright)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image file {path}: {pillow_error_reason(err, path)}") from err


def pillow_error_reason(error: BaseException, path: Union[str, os.PathLike]) -> str:
    """Pillow's message for a file it failed to read, on one line and without the path (the caller names it)."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image file Pillow can read"
    text = str(error).replace(f"'{path}'", "").replace(str(path), "")
    return " ".join(text.split()) or type(error).__name__


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a Pillow image of any mode to 8-bit "RGB" by the rules in the module docstring."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        gray16 = np.asarray(img).astype(np.float64)  # (H, W), big- or little-endian becomes native
        gray8 = np.round(np.clip(gray16, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(gray8, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow's recommended route for palettes with a transparent index
    return img.convert("RGB")  # RGBA/LA/PA drop alpha; L, 1, P, CMYK, YCbCr, ... use Pillow's conversion


def pil_to_tensor01(img: Image.Image) -> torch.Tensor:
    """Convert a Pillow image to a float32 tensor (3, H, W) with values in [0, 1], RGB order.

    Args:
        img: a Pillow image; modes other than "RGB" are converted first with `to_rgb`.

    Returns:
        float32 tensor of shape (3, H, W), value = uint8 value / 255.
    """
    return to_uint8_tensor(img).to(torch.float32).div_(255.0)


def to_uint8_tensor(image: Union[Image.Image, torch.Tensor]) -> torch.Tensor:
    """Convert a Pillow image or a float image tensor in [0, 1] to a uint8 tensor (3, H, W).

    Args:
        image: a Pillow image (any mode, converted with `to_rgb`), or a floating tensor (3, H, W) in [0, 1]
            (values outside are clamped; rounding to the nearest integer).

    Returns:
        uint8 tensor of shape (3, H, W), RGB order, on the CPU for a Pillow input, else on the input's device.
    """
    if isinstance(image, Image.Image):
        hwc = np.array(to_rgb(image), dtype=np.uint8)  # (H, W, 3), a writable copy
        return torch.from_numpy(hwc).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(
                f"expected a floating tensor of shape (3, H, W), got dtype {image.dtype} shape {tuple(image.shape)}"
            )
        return image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"expected a PIL.Image.Image or a torch.Tensor, got {type(image).__name__}")
