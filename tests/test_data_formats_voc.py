"""fpn.data.formats.voc: a small Pascal VOC folder read into the exact COCO dict expected (1 taken off xmin/ymin,
difficult -> crowd, sorted images and classes, classes.txt order), its splits, the image found by the xml's stem, and
every malformed input as its one-line message naming the file."""
import json

import pytest
from PIL import Image

from fpn.data.coco import CocoDetection
from fpn.data.formats.voc import read_voc
from fpn.errors import InputError


def _image(path, width, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 30)).save(path)


def _xml(filename, width, height, objects=(), size=True):
    """VOC annotation text; objects: (name, (xmin, ymin, xmax, ymax), difficult) or raw '<object>...' strings."""
    parts = ["<annotation>", "<folder>VOC</folder>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    if size:
        parts.append(f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>")
    for obj in objects:
        if isinstance(obj, str):
            parts.append(obj)
            continue
        name, (xmin, ymin, xmax, ymax), difficult = obj
        parts.append(f"<object><name>{name}</name><pose>Left</pose><truncated>1</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                     f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    return "\n".join(parts + ["</annotation>"])


def _voc(root, annotations, images):
    """annotations: {stem: xml text}; images: {file name: (width, height)} in JPEGImages."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for stem, text in annotations.items():
        (root / "Annotations" / f"{stem}.xml").write_text(text)
    for name, (width, height) in images.items():
        _image(root / "JPEGImages" / name, width, height)
    return root


def _two_images(root):
    """b.xml (dog + a difficult cat) and a.xml (a person, whose <filename> says .jpg but the file is a.png)."""
    return _voc(root, {
        "b": _xml("b.jpg", 40, 30, [("dog", (1, 2, 10, 20), 0), ("cat", (5, 6, 5, 9), 1)]),
        "a": _xml("a.jpg", 20, 24, [("person", (3.5, 4, 12, 24), 0)]),
    }, {"b.jpg": (40, 30), "a.png": (20, 24)})


def test_folder_gives_the_expected_coco_dict(tmp_path):
    data = read_voc(_two_images(tmp_path))
    assert data.data_format == "voc"
    assert data.images_root == tmp_path / "JPEGImages"
    assert data.splits == {}
    assert data.coco == {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 24},
                   {"id": 2, "file_name": "b.jpg", "width": 40, "height": 30}],
        "annotations": [
            # (xmin - 1, ymin - 1, xmax, ymax) in xywh
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2.5, 3.0, 9.5, 21.0], "area": 199.5, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0.0, 1.0, 10.0, 19.0], "area": 190.0, "iscrowd": 0},
            # difficult -> crowd; a one-pixel-wide box (xmin == xmax) is 1 wide
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [4.0, 5.0, 1.0, 4.0], "area": 4.0, "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "person"}],
    }
    assert data.notes == [
        "1 images were found by their annotation file's name because <filename> named no file in JPEGImages "
        "(e.g. a.xml -> a.png)",
        "1 objects marked difficult are crowd regions (iscrowd = 1): training leaves them out and evaluation "
        "ignores detections on them",
    ]


def test_splits_and_per_class_files(tmp_path):
    root = _two_images(tmp_path)
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("b\n")
    (main / "val.txt").write_text("a\n\n")
    (main / "trainval.txt").write_text("b\na\nb\n")  # file order, each id once
    (main / "dog_train.txt").write_text("b  1\nzzz -1\n")  # per-class: not read
    assert read_voc(root).splits == {"train": [2], "val": [1], "trainval": [2, 1]}


def test_classes_txt_sets_the_order_and_adds_unused_names(tmp_path):
    root = _two_images(tmp_path)
    (root / "classes.txt").write_text("person\n\ndog\ncat\nbird\n")
    coco = read_voc(root).coco
    assert coco["categories"] == [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cat"},
                                  {"id": 4, "name": "bird"}]
    assert [ann["category_id"] for ann in coco["annotations"]] == [1, 2, 3]


def test_image_without_objects_and_names_with_whitespace(tmp_path):
    root = _voc(tmp_path, {"x": _xml("x.jpg", 8, 6), "y": _xml("y.jpg", 8, 6, [("\n  boat \n", (1, 1, 8, 6), 0)])},
                {"x.jpg": (8, 6), "y.jpg": (8, 6)})
    coco = read_voc(root).coco
    assert [image["file_name"] for image in coco["images"]] == ["x.jpg", "y.jpg"]
    assert coco["annotations"] == [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0.0, 0.0, 8.0, 6.0],
                                    "area": 48.0, "iscrowd": 0}]
    assert coco["categories"] == [{"id": 1, "name": "boat"}]


BAD_XMLS = {
    "parse": ("<annotation>\n<filename>a.jpg</filename>\n<size><width>8</width></sise>\n</annotation>",
              "{xml}:3:24: XML does not parse (mismatched tag)"),
    "root": ("<labels><filename>a.jpg</filename></labels>",
             "{xml}: the root element is <labels>, not VOC's <annotation>"),
    "no size": (_xml("a.jpg", 8, 6, size=False), "{xml}: no <size> (the image's <width> and <height>)"),
    "bad size": (_xml("a.jpg", "8.5", 6), "{xml}: <size><width> must be a positive whole number of pixels, got '8.5'"),
    "zero size": (_xml("a.jpg", 8, 0), "{xml}: <size><height> must be a positive whole number of pixels, got '0'"),
    "no name": (_xml("a.jpg", 8, 6, [("", (1, 1, 2, 2), 0)]), "{xml}: object 1 has no <name>"),
    "no bndbox": (_xml("a.jpg", 8, 6, [("dog", (1, 1, 2, 2), 0), "<object><name>cat</name></object>"]),
                  "{xml}: object 2 ('cat') has no <bndbox>"),
    "no xmax": (_xml("a.jpg", 8, 6, ["<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                                     "<ymax>3</ymax></bndbox></object>"]),
                "{xml}: object 1 ('cat') has no <bndbox><xmax>"),
    "text coordinate": (_xml("a.jpg", 8, 6, [("dog", (1, "two", 3, 4), 0)]),
                        "{xml}: object 1 ('dog') has <ymin>two</ymin>, which is not a number"),
    "nan coordinate": (_xml("a.jpg", 8, 6, [("dog", (1, 2, "nan", 4), 0)]),
                       "{xml}: object 1 ('dog') has <xmax>nan</xmax>, which is not a number"),
    "inverted": (_xml("a.jpg", 8, 6, [("dog", (5, 2, 4, 4), 0)]),
                 "{xml}: object 1 ('dog') has an inverted <bndbox>: xmin 5, ymin 2, xmax 4, ymax 4"),
    "difficult": (_xml("a.jpg", 8, 6, [("dog", (1, 2, 3, 4), "yes")]),
                  "{xml}: object 1 ('dog') has <difficult>yes</difficult>; expected 0 or 1"),
    "no image": (_xml("c.jpg", 8, 6), "{xml}: <filename> 'c.jpg' is not in {images}, nor is any image named a.*"),
    "no filename": (_xml(None, 8, 6), "{xml}: no <filename>, nor is any image named a.*"),
}


@pytest.mark.parametrize("case", sorted(BAD_XMLS))
def test_malformed_annotation_file_is_one_line_naming_it(tmp_path, case):
    text, expected = BAD_XMLS[case]
    image = "b.jpg" if case in ("no image", "no filename") else "a.jpg"
    root = _voc(tmp_path, {"a": text}, {image: (8, 6)})
    with pytest.raises(InputError) as caught:
        read_voc(root)
    xml = root / "Annotations" / "a.xml"
    assert str(caught.value) == expected.format(xml=xml, images=root / "JPEGImages")


def test_two_images_with_the_xml_stem_are_ambiguous(tmp_path):
    root = _voc(tmp_path, {"a": _xml("gone.jpg", 8, 6)}, {"a.jpg": (8, 6), "a.png": (8, 6)})
    with pytest.raises(InputError, match=r"a\.xml: <filename> 'gone\.jpg' is not in .*JPEGImages, and several "
                                         r"images are named a\.\*: a\.jpg, a\.png$"):
        read_voc(root)


def test_folder_and_file_errors(tmp_path):
    with pytest.raises(InputError) as caught:
        read_voc(tmp_path)
    assert str(caught.value) == f"{tmp_path}: not a Pascal VOC folder: Annotations/ is missing"
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(InputError) as caught:
        read_voc(tmp_path)
    assert str(caught.value) == f"{tmp_path / 'Annotations'}: no .xml annotation files"


def test_split_naming_an_image_without_xml(tmp_path):
    root = _two_images(tmp_path)
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "val.txt").write_text("a\n2008_000001\n")
    with pytest.raises(InputError) as caught:
        read_voc(root)
    assert str(caught.value) == f"{main / 'val.txt'}:2: image id '2008_000001' has no Annotations/2008_000001.xml"


def test_classes_txt_errors(tmp_path):
    root = _two_images(tmp_path)
    classes = root / "classes.txt"
    classes.write_text("cat\nperson\n")
    with pytest.raises(InputError) as caught:
        read_voc(root)
    assert str(caught.value) == f"{root / 'Annotations' / 'b.xml'}: object 1 is named 'dog', which is not in {classes}"
    classes.write_text("cat\ndog\n cat\nperson\n")
    with pytest.raises(InputError) as caught:
        read_voc(root)
    assert str(caught.value) == f"{classes}:3: 'cat' is listed twice"
    classes.write_text("\n\n")
    with pytest.raises(InputError) as caught:
        read_voc(root)
    assert str(caught.value) == f"{classes}: no class names (one per line)"


def test_text_files_with_a_byte_order_mark_and_not_utf8(tmp_path):
    root = _two_images(tmp_path)
    (root / "classes.txt").write_bytes("\ufeffperson\ndog\ncat\n".encode("utf-8"))
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "test.txt").write_bytes("\ufeffa\n".encode("utf-8"))
    data = read_voc(root)
    assert [c["name"] for c in data.coco["categories"]] == ["person", "dog", "cat"]
    assert data.splits == {"test": [1]}
    (main / "test.txt").write_bytes(b"a\n\xff\n")
    with pytest.raises(InputError) as caught:
        read_voc(root)
    assert str(caught.value) == f"{main / 'test.txt'}: not UTF-8 text (invalid start byte at byte 2)"


def test_dataset_reads_the_dict(tmp_path):
    """The dict goes through CocoDetection as a COCO file does: the difficult object is a crowd region left out."""
    data = read_voc(_two_images(tmp_path))
    annotations_file = tmp_path / "instances.json"
    annotations_file.write_text(json.dumps(data.coco))
    dataset = CocoDetection(data.images_root, annotations_file, train=False)
    assert dataset.num_crowd_annotations == 1
    image, target = dataset[1]
    assert image.shape == (3, 30, 40)
    assert target["boxes"].tolist() == [[0.0, 1.0, 10.0, 20.0]]
    assert target["labels"].tolist() == [2]
