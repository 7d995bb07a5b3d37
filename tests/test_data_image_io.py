"""fpn.data.image_io: every pixel mode decodes to the exact expected RGB values, EXIF orientation is applied,
unreadable files raise errors naming the path; parity with torchvision.io where it reads the same file."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file

from fpn.data.image_io import load_rgb_image, pil_to_tensor01, to_uint8_tensor

# torchvision 0.29 marks its image decoders deprecated; they are still the reference here.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

RGB_2x3 = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10  # (H=2, W=3, 3), every value distinct


def _rgb(path):
    return np.asarray(load_rgb_image(path))


def test_rgb_png_round_trip_and_torchvision_parity(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(RGB_2x3).save(path)
    image = load_rgb_image(path)
    assert image.mode == "RGB" and image.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(image), RGB_2x3)
    reference = decode_image(read_file(str(path)), ImageReadMode.RGB)
    assert torch.equal(to_uint8_tensor(image), reference)


def test_grayscale_is_replicated(tmp_path):
    gray = np.array([[0, 1, 128], [200, 254, 255]], dtype=np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    expected = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_array_equal(_rgb(path), expected)
    assert torch.equal(to_uint8_tensor(load_rgb_image(path)), decode_image(read_file(str(path)), ImageReadMode.RGB))


def test_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 128], [1, 2, 3, 255]]], dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    np.testing.assert_array_equal(_rgb(path), rgba[..., :3])
    assert torch.equal(to_uint8_tensor(load_rgb_image(path)), decode_image(read_file(str(path)), ImageReadMode.RGB))

    la = np.array([[[7, 0], [99, 255]]], dtype=np.uint8)  # (1, 2, 2): gray, alpha
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    np.testing.assert_array_equal(_rgb(path), np.array([[[7, 7, 7], [99, 99, 99]]], dtype=np.uint8))


def test_palette_with_and_without_transparency(tmp_path):
    palette_image = Image.new("P", (3, 1))
    palette_image.putpalette([255, 0, 0, 0, 0, 255, 12, 34, 56])
    for x, index in enumerate([2, 0, 1]):
        palette_image.putpixel((x, 0), index)
    expected = np.array([[[12, 34, 56], [255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    path = tmp_path / "p.png"
    palette_image.save(path)
    np.testing.assert_array_equal(_rgb(path), expected)
    path = tmp_path / "p_transparent.png"
    palette_image.save(path, transparency=1)  # index 1 transparent: its colour is kept (alpha dropped)
    np.testing.assert_array_equal(_rgb(path), expected)


SIXTEEN_BIT = np.array([[0, 257, 65535], [1000, 30000, 128]], dtype=np.uint16)
# round(v * 255 / 65535): 1000 -> 3.89 -> 4, 30000 -> 116.73 -> 117, 128 -> 0.498 -> 0
SIXTEEN_BIT_AS_8 = np.array([[0, 1, 255], [4, 117, 0]], dtype=np.uint8)


@pytest.mark.parametrize("kind", ["I;16 png", "I;16B tiff", "I tiff"])
def test_sixteen_bit_is_scaled_to_eight_bit(tmp_path, kind):
    if kind == "I;16 png":
        image, path = Image.fromarray(SIXTEEN_BIT), tmp_path / "g16.png"
    elif kind == "I;16B tiff":
        image = Image.frombytes("I;16B", (3, 2), SIXTEEN_BIT.astype(">u2").tobytes())
        path = tmp_path / "g16b.tif"
    else:
        image, path = Image.fromarray(SIXTEEN_BIT.astype(np.int32)), tmp_path / "g32.tif"
    image.save(path)
    assert Image.open(path).mode == kind.split()[0]
    np.testing.assert_array_equal(_rgb(path), np.repeat(SIXTEEN_BIT_AS_8[..., None], 3, axis=2))


def test_sixteen_bit_matches_torchvision_uint16_scaled(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(SIXTEEN_BIT).save(path)
    reference16 = decode_image(read_file(str(path)), ImageReadMode.RGB)  # uint16 (3, H, W)
    expected = torch.round(reference16.to(torch.float64) * 255 / 65535).to(torch.uint8)
    assert torch.equal(to_uint8_tensor(load_rgb_image(path)), expected)


@pytest.mark.parametrize(
    "orientation, expected_r",
    [
        (1, [[0, 30, 60], [90, 120, 150]]),
        (3, [[150, 120, 90], [60, 30, 0]]),  # rotated 180 degrees
        (6, [[90, 0], [120, 30], [150, 60]]),  # shown rotated 90 degrees clockwise
        (8, [[60, 150], [30, 120], [0, 90]]),  # shown rotated 90 degrees counter-clockwise
        (2, [[60, 30, 0], [150, 120, 90]]),  # mirrored left-right
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, expected_r):
    exif = Image.Exif()
    exif[0x0112] = orientation  # the Orientation tag
    path = tmp_path / f"exif{orientation}.png"
    Image.fromarray(RGB_2x3).save(path, exif=exif)
    pixels = _rgb(path)
    np.testing.assert_array_equal(pixels[..., 0], np.array(expected_r, dtype=np.uint8))
    np.testing.assert_array_equal(pixels[..., 1], np.array(expected_r, dtype=np.uint8) + 10)


def test_cmyk_is_converted(tmp_path):
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (255, 0, 0, 0))  # pure cyan
    cmyk.putpixel((1, 0), (0, 0, 0, 255))  # pure black
    path = tmp_path / "cmyk.tif"
    cmyk.save(path)
    np.testing.assert_array_equal(_rgb(path), np.array([[[0, 255, 255], [0, 0, 0]]], dtype=np.uint8))


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere.png"
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        load_rgb_image(path)


def test_not_an_image_names_the_path(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image")
    with pytest.raises(ValueError) as caught:
        load_rgb_image(path)
    assert str(caught.value) == f"cannot decode image file {path}: not an image file Pillow can read"


@pytest.mark.parametrize("fmt, suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_file_names_the_path(tmp_path, fmt, suffix):
    noise = np.random.default_rng(0).integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, fmt)
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match=f"cut.{suffix}") as caught:
        load_rgb_image(path)
    assert str(caught.value).count(str(path)) == 1 and "\n" not in str(caught.value)


def test_pil_to_tensor01_values_dtype_and_shape():
    tensor = pil_to_tensor01(Image.fromarray(RGB_2x3))
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 2, 3)
    expected = torch.from_numpy(RGB_2x3).permute(2, 0, 1).float() / 255
    assert torch.equal(tensor, expected)
    assert tensor.max() == torch.tensor(170 / 255, dtype=torch.float32) and tensor.min() == 0.0
    gray = pil_to_tensor01(Image.fromarray(np.array([[255]], dtype=np.uint8), mode="L"))
    assert torch.equal(gray, torch.ones(3, 1, 1))


def test_to_uint8_tensor_from_float_rounds_and_clamps():
    image = torch.tensor([[[0.0, 0.5, 1.0, -0.2, 1.7, 0.002]]]).expand(3, 1, 6)
    out = to_uint8_tensor(image)
    assert out.dtype == torch.uint8
    assert out[0, 0].tolist() == [0, 128, 255, 0, 255, 1]
    round_trip = to_uint8_tensor(pil_to_tensor01(Image.fromarray(RGB_2x3)))
    assert torch.equal(round_trip, torch.from_numpy(RGB_2x3).permute(2, 0, 1))
    with pytest.raises(ValueError, match=r"\(4, 2, 2\)"):
        to_uint8_tensor(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="uint8"):
        to_uint8_tensor(torch.zeros(3, 2, 2, dtype=torch.uint8))
