"""Tests of fpn/data/formats: YOLO folders and data YAMLs, COCO JSON paths, format detection, the YAML subset and
the seeded train/val split, each against a hand-written COCO dict or error line."""
from pathlib import Path

import pytest
from PIL import Image

from fpn.data.formats import detect_format, read_dataset, select_split, split_by_fraction
from fpn.data.formats.yaml_subset import read_yaml_subset
from fpn.errors import InputError


def write_image(path: Path, width: int, height: int, orientation: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.new("RGB", (width, height), (90, 120, 150)).save(path, exif=exif)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def flat_yolo(root: Path, lines: str = "0 0.5 0.5 0.25 0.5\n1 0.25 0.25 0.5 0.5\n") -> Path:
    """images/a.png 64x32 with two boxes, images/b.png 40x40 without a label file, classes.txt."""
    write_image(root / "images/a.png", 64, 32)
    write_image(root / "images/b.png", 40, 40)
    write_text(root / "labels/a.txt", lines)
    write_text(root / "classes.txt", "circle\nsquare\n")
    return root


FLAT_COCO = {
    "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 32},
               {"id": 2, "file_name": "b.png", "width": 40, "height": 40}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [24.0, 8.0, 16.0, 16.0], "area": 256.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0.0, 0.0, 32.0, 16.0], "area": 512.0, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
}


def test_flat_yolo_folder_reads_as_the_hand_written_coco_dict(tmp_path):
    data = read_dataset(flat_yolo(tmp_path / "set"))
    assert data.coco == FLAT_COCO
    assert (data.data_format, data.images_root, data.splits) == ("yolo", tmp_path / "set/images", {})
    assert data.notes == [f"{tmp_path / 'set'}: yolo format (detected)", "class names from classes.txt"]


def test_split_subfolders_polygons_and_classes_named_by_index(tmp_path):
    root = tmp_path / "set"
    write_image(root / "images/train/a.png", 64, 32)
    write_image(root / "images/val/c.png", 40, 40)
    write_text(root / "labels/train/a.txt", "0 0.5 0.5 0.25 0.5\n")
    write_text(root / "labels/val/c.txt", "\n2 0.25 0.25 0.75 0.25 0.5 0.75\n")  # a triangle, line 2
    data = read_dataset(root)
    assert data.coco == {
        "images": [{"id": 1, "file_name": "train/a.png", "width": 64, "height": 32},
                   {"id": 2, "file_name": "val/c.png", "width": 40, "height": 40}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [24.0, 8.0, 16.0, 16.0], "area": 256.0,
             "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [10.0, 10.0, 20.0, 20.0], "area": 200.0,
             "iscrowd": 0, "segmentation": [[10.0, 10.0, 30.0, 10.0, 20.0, 30.0]]},
        ],
        "categories": [{"id": 1, "name": "0"}, {"id": 2, "name": "1"}, {"id": 3, "name": "2"}],
    }
    assert data.splits == {"train": [1], "val": [2]}
    assert data.notes[-1] == "no class names (data YAML, classes.txt or *.names): the classes are named 0 to 2"
    assert select_split(data, "val").coco["images"] == [data.coco["images"][1]]
    with pytest.raises(InputError, match=r"no 'test' split in this yolo data \(splits: train, val\)$"):
        select_split(data, "test")


@pytest.mark.parametrize("names", ["names: [circle, 'square box', dot]", "names:\n  0: circle\n  1: square box\n  2: dot",
                                   "nc: 3\nnames:\n  - circle\n  - \"square box\"\n  - dot"])
def test_data_yaml_with_list_or_mapping_names(tmp_path, names):
    root = tmp_path / "set"
    write_image(root / "pics/images/train/a.png", 64, 32)
    write_image(root / "pics/images/val/b.png", 40, 40)
    write_image(root / "pics/images/test/t.png", 20, 20)
    write_text(root / "pics/labels/train/a.txt", "1 0.5 0.5 0.25 0.5\n")
    write_text(root / "pics/labels/val/b.txt", "")  # empty: a background image
    write_text(root / "data.yaml", f"# shapes\npath: pics  # the root\ntrain: images/train\nval: images/val\n"
                                   f"test: images/test\n{names}\n")
    data = read_dataset(root / "data.yaml")
    assert data.coco == {
        "images": [{"id": 1, "file_name": "test/t.png", "width": 20, "height": 20},
                   {"id": 2, "file_name": "train/a.png", "width": 64, "height": 32},
                   {"id": 3, "file_name": "val/b.png", "width": 40, "height": 40}],
        "annotations": [{"id": 1, "image_id": 2, "category_id": 2, "bbox": [24.0, 8.0, 16.0, 16.0], "area": 256.0,
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square box"}, {"id": 3, "name": "dot"}],
    }
    assert data.splits == {"train": [2], "val": [3], "test": [1]}
    assert data.images_root == (root / "pics/images").resolve()
    assert read_dataset(root).coco == data.coco  # the folder holding the YAML


def test_sizes_are_taken_after_the_exif_rotation(tmp_path):
    root = tmp_path / "set"
    write_image(root / "images/r.jpg", 64, 32, orientation=6)  # stored 64x32, shown 32x64
    write_text(root / "labels/r.txt", "0 0.5 0.25 0.5 0.5\n")
    data = read_dataset(root)
    assert data.coco["images"] == [{"id": 1, "file_name": "r.jpg", "width": 32, "height": 64}]
    assert data.coco["annotations"][0]["bbox"] == [8.0, 0.0, 16.0, 32.0]


def test_coordinates_within_the_tolerance_are_clipped(tmp_path):
    data = read_dataset(flat_yolo(tmp_path / "set", "0 0.9 0.5 0.2004 1.0008\n"))
    assert data.coco["annotations"][0]["bbox"] == pytest.approx([51.1872, 0.0, 12.8128, 32.0], abs=1e-12)


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.5", "labels/a.txt:2: 4 fields, expected 5 (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 "
                      "..., an odd count of 7 or more)"),
    ("0 0.1 0.1 0.2 0.2 0.3", "labels/a.txt:2: 6 fields, expected 5 (class cx cy w h) or a polygon (class x1 y1 "
                              "x2 y2 x3 y3 ..., an odd count of 7 or more)"),
    ("0 0.5 abc 0.5 0.5", "labels/a.txt:2: 'abc' is not a number"),
    ("0 0.5 nan 0.5 0.5", "labels/a.txt:2: 'nan' is not a finite number"),
    ("cat 0.5 0.5 0.5 0.5", "labels/a.txt:2: class 'cat' is not a number"),
    ("1.5 0.5 0.5 0.5 0.5", "labels/a.txt:2: class '1.5' is not a class index (an integer >= 0)"),
    ("2 0.5 0.5 0.5 0.5", "labels/a.txt:2: class 2 is not among the 2 classes (0 to 1)"),
    ("0 0.5 0.5 0 0.5", "labels/a.txt:2: width and height must be > 0, got 0 0.5"),
    ("0 0.9 0.5 0.4 0.5", "labels/a.txt:2: coordinate 1.1 is outside the image (normalised [0, 1], 0.001 tolerated)"),
    ("0 0.2 -0.01 0.4 0.4 0.3 0.5", "labels/a.txt:2: coordinate -0.01 is outside the image (normalised [0, 1], "
                                    "0.001 tolerated)"),
])
def test_malformed_label_lines_name_file_and_line(tmp_path, line, message):
    root = flat_yolo(tmp_path / "set", f"0 0.5 0.5 0.25 0.5\n{line}\n")
    with pytest.raises(InputError) as error:
        read_dataset(root)
    assert str(error.value) == message


def test_a_label_file_without_its_image_is_an_error(tmp_path):
    root = flat_yolo(tmp_path / "set")
    write_text(root / "labels/zz.txt", "0 0.5 0.5 0.25 0.5\n")
    with pytest.raises(InputError) as error:
        read_dataset(root)
    assert str(error.value) == ("labels/zz.txt: a label file with no image (no image named zz with the same path "
                                "under images/)")


@pytest.mark.parametrize("yaml, message", [
    ("train: images\nnames: {0: a}\n", ":2: '{0: a}' is outside the YAML subset read here (scalars, [a, b] lists, "
                                       "one block list or mapping per key)"),
    ("train: images\nnames:\n  0:\n    - a\n", ":3: nested blocks are not read (one indented list or mapping per key)"),
    ("train: images\nnames: ['a\n", ":2: an inline list must close on its line: \"['a\""),
    ("train: images\nnames: [a, b]\nnc: 3\n", ": nc is 3 but names has 2 entries"),
    ("train: images\nnames:\n  0: a\n  2: b\n", ": names must be indexed 0 to 1, got [0, 2]"),
    ("train: missing\nnames: [a]\n", ": train: missing: no such folder"),
])
def test_malformed_data_yaml_names_file_and_line(tmp_path, yaml, message):
    root = flat_yolo(tmp_path / "set")
    write_text(root / "data.yaml", yaml)
    with pytest.raises(InputError) as error:
        read_dataset(root)
    assert str(error.value).startswith(f"{root / 'data.yaml'}{message}")


def test_yaml_subset_reads_scalars_lists_mappings_and_block_text(tmp_path):
    write_text(tmp_path / "d.yaml", "---\npath: .  # root\ntrain: [a, 'b c', \"d#e\"]\nval:\n- v\nnc: 2\nf: 1.5\n"
                                    "ok: true\nnone: ~\ndownload: |\n  import os  # never run\n  os.getcwd()\n"
                                    "names:\n  0: 'it''s'\n  1: b # comment\n")
    assert read_yaml_subset(tmp_path / "d.yaml") == {
        "path": ".", "train": ["a", "b c", "d#e"], "val": ["v"], "nc": 2, "f": 1.5, "ok": True, "none": None,
        "download": "import os\nos.getcwd()", "names": {0: "it's", 1: "b"}}


def test_coco_json_images_beside_it_or_in_images(tmp_path):
    coco = '{"images": [{"id": 3, "file_name": "a.png", "width": 8, "height": 8}], "annotations": [], ' \
           '"categories": [{"id": 7, "name": "x"}]}'
    write_image(tmp_path / "beside/a.png", 8, 8)
    write_text(tmp_path / "beside/labels.json", coco)
    write_image(tmp_path / "sub/images/a.png", 8, 8)
    write_text(tmp_path / "sub/annotations/instances.json", coco)
    beside = read_dataset(tmp_path / "beside/labels.json")
    assert (beside.images_root, beside.data_format, beside.coco["images"][0]["id"]) == (tmp_path / "beside", "coco", 3)
    assert read_dataset(tmp_path / "sub").images_root == tmp_path / "sub/images"  # the folder's one json
    write_text(tmp_path / "sub/second.json", coco)
    with pytest.raises(InputError, match=r"sub: a COCO folder holds exactly one .json file \(at its top or in annotations/\), found 2 "
                                         r"\(second.json, annotations/instances.json\): name the file$"):
        read_dataset(tmp_path / "sub")
    write_text(tmp_path / "bad.json", '{"images": [\n1,]}')
    with pytest.raises(InputError, match=r"bad.json:2: not valid JSON"):
        read_dataset(tmp_path / "bad.json")
    write_text(tmp_path / "lost/x.json", coco)
    with pytest.raises(InputError, match=r"x.json: the first image's file a.png is in none of "):
        read_dataset(tmp_path / "lost/x.json")


def test_format_detection_and_the_undetectable_folder(tmp_path):
    assert detect_format(flat_yolo(tmp_path / "yolo")) == "yolo"
    (tmp_path / "voc/Annotations").mkdir(parents=True)
    (tmp_path / "voc/JPEGImages").mkdir()
    assert detect_format(tmp_path / "voc") == "voc"
    write_text(tmp_path / "lm/sub/a.json", '{"shapes": [], "imagePath": "a.png", "imageWidth": 8, "imageHeight": 8}')
    assert detect_format(tmp_path / "lm") == "labelme"
    assert detect_format(tmp_path / "lm/sub/a.json") == "coco"  # a file is named by its suffix
    (tmp_path / "yolo/Annotations").mkdir()
    (tmp_path / "yolo/JPEGImages").mkdir()
    with pytest.raises(InputError, match=r"yolo: holds yolo and voc data; choose one with --data-format$"):
        read_dataset(tmp_path / "yolo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as error:
        read_dataset(tmp_path / "empty")
    assert str(error.value) == (
        f"{tmp_path / 'empty'}: no label format recognised (coco: a .json file or a folder with one; yolo: images/ + "
        "labels/ or a data YAML; voc: Annotations/ + JPEGImages/; labelme: LabelMe .json files (shapes, imagePath))")
    with pytest.raises(InputError, match=r"unknown data format 'kitti': choose coco, yolo, voc, labelme"):
        read_dataset(tmp_path / "yolo", "kitti")
    with pytest.raises(InputError, match=r"nowhere: no such file or folder"):
        read_dataset(tmp_path / "nowhere")


def background_set(root: Path, names) -> Path:
    for name in names:
        write_image(root / "images" / name, 8, 8)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    write_text(root / "classes.txt", "thing\n")
    return root


def test_fraction_split_is_seeded_disjoint_and_independent_of_listing_order(tmp_path):
    names = [f"img{i:02d}.png" for i in range(10)]
    data = read_dataset(background_set(tmp_path / "a", names))
    again = read_dataset(background_set(tmp_path / "b", names[::-1]))  # files created in the other order
    train, val = split_by_fraction(data, 0.3, seed=0)
    val_names = [image["file_name"] for image in val.coco["images"]]
    assert val_names == ["img02.png", "img05.png", "img08.png"]
    assert [image["file_name"] for image in split_by_fraction(again, 0.3, seed=0)[1].coco["images"]] == val_names
    assert {image["id"] for image in train.coco["images"]} | {image["id"] for image in val.coco["images"]} == \
        set(range(1, 11))
    assert not {image["id"] for image in train.coco["images"]} & {image["id"] for image in val.coco["images"]}
    assert train.coco["categories"] == val.coco["categories"] == [{"id": 1, "name": "thing"}]
    other = [image["file_name"] for image in split_by_fraction(data, 0.3, seed=1)[1].coco["images"]]
    assert other == ["img00.png", "img02.png", "img09.png"]
    assert len(split_by_fraction(data, 0.01, seed=0)[1].coco["images"]) == 1  # at least one
    with pytest.raises(InputError, match=r"--val-split must be between 0 and 1 .*, got 1.5"):
        split_by_fraction(data, 1.5)


def test_an_unreadable_image_is_listed_with_size_0_and_no_objects(tmp_path):
    root = flat_yolo(tmp_path / "set")
    (root / "images/a.png").write_bytes(b"not a png")
    data = read_dataset(root)
    assert data.coco["images"][0] == {"id": 1, "file_name": "a.png", "width": 0, "height": 0}
    assert data.coco["annotations"] == []
    assert data.notes[-1] == ("1 image(s) whose header Pillow cannot read (e.g. images/a.png) are listed with size 0 "
                              "and no objects: the image check reports them (--skip-bad-images drops them)")
