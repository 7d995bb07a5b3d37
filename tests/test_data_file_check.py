"""fpn.data.file_check: each kind of bad file found (missing, empty, not a file, not an image, size mismatch, EXIF
rotation, truncated pixels only with decode=True), the skip and error policies, bounded messages, and a file
lost after the check reported as one line through a DataLoader worker."""
import json
import warnings

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from fpn.tools.cli import error_line
from fpn.errors import InputError
from fpn.data.coco import CocoDetection, collate
from fpn.data.file_check import check_dataset_images, check_image_file, check_image_files, handle_bad_images

CATEGORIES = [{"id": 1, "name": "thing"}]


def _noise(width, height, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _dataset(tmp_path, sizes, skip=False, suffix="png"):
    """Image i (id i + 1) of (width, height) sizes[i], with one box each; files `0001.<suffix>`, ..."""
    images_dir = tmp_path / "images"
    images_dir.mkdir(exist_ok=True)
    images, annotations = [], []
    for image_id, (width, height) in enumerate(sizes, start=1):
        name = f"{image_id:04d}.{suffix}"
        Image.fromarray(_noise(width, height, image_id)).save(images_dir / name)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [1, 1, 4, 4],
                            "area": 16.0, "iscrowd": 0})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return CocoDetection(images_dir, path, train=False, skip_bad_images=skip)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _reasons(dataset, **kwargs):
    return {path.name: reason for path, reason in check_image_files(dataset, progress=False, **kwargs)}


def test_good_files_pass(tmp_path):
    dataset = _dataset(tmp_path, [(16, 12), (10, 20)])
    assert check_image_files(dataset, progress=False) == []
    assert check_image_files(dataset, decode=True, workers=1, progress=False) == []


def test_each_kind_of_bad_file_is_named_with_its_reason(tmp_path):
    dataset = _dataset(tmp_path, [(16, 12)] * 6)
    folder = dataset.images_dir
    (folder / "0001.png").unlink()
    (folder / "0002.png").write_bytes(b"")
    (folder / "0003.png").write_text("this is not an image")
    (folder / "0004.png").unlink()
    (folder / "0004.png").mkdir()
    Image.fromarray(_noise(12, 16)).save(folder / "0005.png")  # 12x16 where the json says 16x12
    reasons = _reasons(dataset)
    assert reasons == {
        "0001.png": "missing",
        "0002.png": "empty file (0 bytes)",
        "0003.png": "not an image file Pillow can read",
        "0004.png": "not a regular file",
        "0005.png": "size 12x16 (W x H) differs from the annotations' 16x12",
    }
    assert _reasons(dataset, decode=True) == reasons


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_pixels_found_only_by_decoding(tmp_path, suffix):
    dataset = _dataset(tmp_path, [(40, 48), (40, 48)], suffix=suffix)
    _truncate(dataset.images_dir / f"0002.{suffix}")
    assert check_image_files(dataset, progress=False) == []  # the header is intact
    reasons = _reasons(dataset, decode=True)
    assert list(reasons) == [f"0002.{suffix}"] and reasons[f"0002.{suffix}"].startswith("cannot decode: ")
    assert str(dataset.images_dir) not in reasons[f"0002.{suffix}"]  # the folder is named once, by the message


def test_exif_rotation_is_applied_before_comparing_sizes(tmp_path):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view; stored 30x20 (W x H), shown 20x30
    Image.fromarray(_noise(30, 20)).save(path, exif=exif)
    assert check_image_file(path, (30, 20)) is None  # (H, W) of the upright image, as the loader gives it
    assert check_image_file(path, (30, 20), decode=True) is None
    assert check_image_file(path, (20, 30)) == (
        "size 20x30 (W x H, after its EXIF rotation) differs from the annotations' 30x20")


def test_error_policy_raises_one_line_naming_folder_count_and_files(tmp_path):
    dataset = _dataset(tmp_path, [(16, 12)] * 4)
    (dataset.images_dir / "0002.png").unlink()
    (dataset.images_dir / "0004.png").write_bytes(b"")
    with pytest.raises(InputError) as caught:
        check_dataset_images(dataset, progress=False)
    assert str(caught.value) == (
        f"2 of 4 images in {dataset.images_dir} cannot be read, e.g. 0002.png: missing; 0004.png: empty file "
        f"(0 bytes); fix them or remove them from {dataset.annotations_file}, or pass --skip-bad-images to leave "
        f"them out")
    assert len(dataset) == 4  # nothing dropped


def test_skip_policy_drops_bad_images_and_keeps_the_dataset_consistent(tmp_path):
    sizes = [(16, 12), (10, 20), (16, 12), (12, 30), (20, 10)]
    dataset = _dataset(tmp_path, sizes, skip=True)
    (dataset.images_dir / "0002.png").unlink()
    (dataset.images_dir / "0003.png").write_text("text")
    with pytest.warns(UserWarning) as caught:
        dropped = check_dataset_images(dataset, progress=False)
    assert [path.name for path, _ in dropped] == ["0002.png", "0003.png"]
    [message] = [str(w.message) for w in caught]
    assert message.startswith(f"skipping bad image files: 2 of 5 images in {dataset.images_dir} cannot be read, e.g. "
                              f"0002.png: missing; 0003.png: not an image")
    assert len(dataset) == 3 and dataset.image_ids == [1, 4, 5] and dataset.num_dropped_images == 2
    assert dataset.aspect_ratio_groups() == [0, 1, 0]
    assert [p.name for p in dataset.image_paths()] == ["0001.png", "0004.png", "0005.png"]
    assert sorted(dataset.coco.getImgIds()) == [1, 4, 5] and len(dataset.coco.getAnnIds()) == 3
    for index, image_id in enumerate([1, 4, 5]):
        image, target = dataset[index]
        width, height = sizes[image_id - 1]
        assert target["image_id"] == image_id and tuple(image.shape) == (3, height, width)
        assert target["boxes"].tolist() == [[1.0, 1.0, 5.0, 5.0]]
    assert check_image_files(dataset, progress=False) == []


def test_skip_policy_with_nothing_readable_is_an_error(tmp_path):
    dataset = _dataset(tmp_path, [(16, 12)] * 2, skip=True)
    for path in dataset.image_paths():
        path.write_bytes(b"")
    with pytest.raises(InputError, match="2 of 2 images .* cannot be read.*; no image is left to use"):
        check_dataset_images(dataset, progress=False)


def test_wrong_folder_is_said_so(tmp_path):
    dataset = _dataset(tmp_path, [(16, 12)] * 3)
    dataset.images_dir = tmp_path / "elsewhere"
    with pytest.raises(InputError, match=r"none of the 3 image files named in .*instances.json is in .*elsewhere "
                                         r"\(e.g. 0001.png\): is that the right images folder\?"):
        check_dataset_images(dataset, progress=False)


def test_message_is_bounded_for_a_thousand_bad_files(tmp_path, capsys):
    dataset = _dataset(tmp_path, [(4, 4)] * 1001)
    for path in dataset.image_paths()[:1000]:
        path.write_bytes(b"")
    bad = check_image_files(dataset, workers=4, progress=True)
    assert "checking images" not in capsys.readouterr().err  # no bar for small sets
    assert len(bad) == 1000
    with pytest.raises(InputError) as caught:
        handle_bad_images(dataset, bad)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400 + len(str(tmp_path)) * 2
    assert message.startswith("1000 of 1001 images") and "0003.png: empty file (0 bytes) (and 997 more)" in message
    dataset.skip_bad_images = True
    with pytest.warns(UserWarning, match=r"skipping bad image files: 1000 of 1001 .*\(and 997 more\)") as caught:
        handle_bad_images(dataset, bad)
    assert len(str(caught[0].message)) < 400 + len(str(tmp_path))
    assert dataset.image_ids == [1001]


def test_progress_bar_for_large_sets(tmp_path, capsys):
    dataset = _dataset(tmp_path, [(4, 4)])
    dataset.image_paths = lambda: [tmp_path / f"{i}.png" for i in range(2000)]
    dataset.image_sizes = lambda: [(4, 4)] * 2000
    assert len(check_image_files(dataset, progress=True)) == 2000
    assert "checking images" in capsys.readouterr().err
    check_image_files(dataset, progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        check_image_files(dataset, workers=0)


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_file_lost_after_the_check_is_one_line_through_a_worker(tmp_path, damage):
    dataset = _dataset(tmp_path, [(40, 48)] * 2)
    check_dataset_images(dataset, progress=False)
    path = dataset.images_dir / "0002.png"
    path.unlink() if damage == "delete" else _truncate(path)
    with pytest.raises(InputError) as direct:
        dataset[1]
    line = str(direct.value)
    assert "\n" not in line and str(path) in line
    assert line.endswith("; restore or replace the file, or skip unreadable images with --skip-bad-images")
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate, num_workers=1)
    with pytest.raises(InputError) as from_worker:
        next(iter(loader))
    assert "Original Traceback" in str(from_worker.value)
    assert error_line(from_worker.value) == line


def test_skip_bad_images_still_skips_a_file_lost_after_the_check(tmp_path):
    dataset = _dataset(tmp_path, [(16, 12)] * 2, skip=True)
    check_dataset_images(dataset, progress=False)
    (dataset.images_dir / "0001.png").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, target = dataset[0]
    assert target["image_id"] == 2 and "skipping bad image" in str(caught[0].message)
