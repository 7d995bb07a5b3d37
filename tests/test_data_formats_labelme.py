"""fpn.data.formats.labelme: a small LabelMe folder read into the exact COCO dict expected (rectangles and polygons
with their segmentations, shapes grouped by group_id and label, other shape types and empty boxes left out with
notes, JSON files that are not LabelMe read past, imagePath relative to the JSON), and every malformed input as its
one-line message naming the file and shape."""
import json

import pytest
from PIL import Image

from fpn.data.coco import CocoDetection
from fpn.data.formats.labelme import read_labelme
from fpn.errors import InputError


def _image(path, width, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (10, 200, 40)).save(path)


def _shape(label, points, shape_type="polygon", group_id=None):
    return {"label": label, "points": points, "group_id": group_id, "description": "", "shape_type": shape_type,
            "flags": {}}


def _labelme(path, image_path, width, height, shapes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": image_path,
                                "imageData": None, "imageHeight": height, "imageWidth": width}, indent=2))


def _folder(root):
    _image(root / "a.jpg", 20, 10)
    _labelme(root / "a.json", "a.jpg", 20, 10, [
        _shape("dog", [[12, 8], [2, 1]], "rectangle"),  # corners in any order
        _shape("cat", [[0, 0], [4, 0], [4, 3]]),
        _shape("edge", [[0, 0], [3, 3]], "line"),
        _shape("person", [[10, 0], [12, 0], [12, 2]], group_id=1),  # one person drawn in two parts
        _shape("cat", [[5, 5], [7, 5], [6, 7]], group_id=1),  # same group_id, other label: another object
        _shape("person", [[14, 4], [16, 8]], "rectangle", group_id=1),
    ])
    _image(root / "c.png", 8, 6)
    _labelme(root / "c.json", "c.png", 8, 6, [])  # an image without objects
    (root / "other").mkdir()
    (root / "other" / "settings.json").write_text(json.dumps({"theme": "dark"}))
    _image(root / "imgs" / "b.png", 8, 6)
    _labelme(root / "sub" / "b.json", "..\\imgs\\b.png", 8, 6, [  # written on Windows
        _shape("p", [[1, 1]], "point"),
        _shape("edge", [[0, 0], [1, 1]], "line"),
        _shape("edge", [[0, 1], [1, 1]], "line"),
        {"label": "cat", "points": [[1, 1], [5, 1], [5, 4], [1, 4]]},  # no shape_type: a polygon, as LabelMe reads it
        _shape("dog", [[3, 3], [3, 5]], "rectangle"),  # zero width
    ])
    return root


def test_folder_gives_the_expected_coco_dict(tmp_path):
    data = read_labelme(_folder(tmp_path))
    assert data.data_format == "labelme"
    assert data.images_root == tmp_path
    assert data.splits == {}
    assert data.coco == {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10},
                   {"id": 2, "file_name": "c.png", "width": 8, "height": 6},
                   {"id": 3, "file_name": "imgs/b.png", "width": 8, "height": 6}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [2.0, 1.0, 10.0, 7.0], "area": 70.0, "iscrowd": 0,
             "segmentation": [[2.0, 1.0, 12.0, 1.0, 12.0, 8.0, 2.0, 8.0]]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 4.0, 3.0], "area": 6.0, "iscrowd": 0,
             "segmentation": [[0.0, 0.0, 4.0, 0.0, 4.0, 3.0]]},
            # the two parts: the union of their boxes, both polygons, 2 + 8 square pixels
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [10.0, 0.0, 6.0, 8.0], "area": 10.0, "iscrowd": 0,
             "segmentation": [[10.0, 0.0, 12.0, 0.0, 12.0, 2.0], [14.0, 4.0, 16.0, 4.0, 16.0, 8.0, 14.0, 8.0]]},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [5.0, 5.0, 2.0, 2.0], "area": 2.0, "iscrowd": 0,
             "segmentation": [[5.0, 5.0, 7.0, 5.0, 6.0, 7.0]]},
            {"id": 5, "image_id": 3, "category_id": 1, "bbox": [1.0, 1.0, 4.0, 3.0], "area": 12.0, "iscrowd": 0,
             "segmentation": [[1.0, 1.0, 5.0, 1.0, 5.0, 4.0, 1.0, 4.0]]},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "person"}],
    }
    for annotation in data.coco["annotations"]:
        assert all(type(v) is float for v in annotation["bbox"] + sum(annotation["segmentation"], []))
    assert data.notes == [
        "3 shapes of type 'line' in 2 files were left out: boxes come from rectangles and polygons",
        "1 shapes of type 'point' in 1 files were left out: boxes come from rectangles and polygons",
        "1 objects with a zero-width or zero-height box in 1 files were left out (e.g. sub/b.json)",
        "1 .json files without 'shapes' were read past as not LabelMe files (e.g. other/settings.json)",
    ]


def test_four_corner_rectangle_and_string_group_ids(tmp_path):
    _image(tmp_path / "x.png", 30, 30)
    _labelme(tmp_path / "x.json", "x.png", 30, 30, [
        _shape("box", [[9, 2], [3, 2], [3, 7], [9, 7]], "rectangle"),  # X-AnyLabeling writes all four corners
        _shape("box", [[20, 20], [22, 20], [22, 21]], group_id="a"),
        _shape("box", [[25, 25], [28, 29]], "rectangle", group_id="a"),
    ])
    annotations = read_labelme(tmp_path).coco["annotations"]
    assert [(ann["bbox"], ann["area"]) for ann in annotations] == [([3.0, 2.0, 6.0, 5.0], 30.0),
                                                                   ([20.0, 20.0, 8.0, 9.0], 13.0)]
    assert annotations[0]["segmentation"] == [[3.0, 2.0, 9.0, 2.0, 9.0, 7.0, 3.0, 7.0]]


def _bad(tmp_path, **fields):
    """a.json (beside a.jpg) without shapes, its keys overridden by `fields` (None: key removed)."""
    _image(tmp_path / "a.jpg", 8, 6)
    data = {"shapes": [], "imagePath": "a.jpg", "imageHeight": 6, "imageWidth": 8}
    data.update(fields)
    (tmp_path / "a.json").write_text(json.dumps({k: v for k, v in data.items() if v is not None}))


BAD_FILES = {
    "no width": (dict(imageWidth=None), "{json}: no 'imageWidth' (a LabelMe file has shapes, imagePath, imageWidth, "
                                        "imageHeight)"),
    "no image path": (dict(imagePath=None), "{json}: no 'imagePath' (a LabelMe file has shapes, imagePath, "
                                            "imageWidth, imageHeight)"),
    "zero height": (dict(imageHeight=0), "{json}: imageHeight must be a positive whole number of pixels, got 0"),
    "text width": (dict(imageWidth="8"), "{json}: imageWidth must be a positive whole number of pixels, got '8'"),
    "shapes dict": (dict(shapes={}), "{json}: 'shapes' is a dict, not a list"),
    "empty image path": (dict(imagePath=""), "{json}: imagePath must be a file name, got ''"),
    "missing image": (dict(imagePath="img/a.jpg"), "{json}: imagePath 'img/a.jpg' names no file ({root}/img/a.jpg)"),
    "shape not object": (dict(shapes=[["dog"]]), "{json}: shapes[0] is a list, not an object"),
    "no label": (dict(shapes=[_shape("", [[0, 0], [1, 1]], "rectangle")]), "{json}: shapes[0] has no label"),
    "group id list": (dict(shapes=[_shape("dog", [[0, 0], [1, 1]], "rectangle"),
                                   _shape("dog", [[0, 0], [1, 1]], "rectangle", group_id=[1])]),
                      "{json}: shapes[1] has group_id [1]; expected a number, a string or null"),
    "no points": (dict(shapes=[{"label": "dog", "shape_type": "rectangle"}]),
                  "{json}: shapes[0] (rectangle) has no 'points' list"),
    "text point": (dict(shapes=[_shape("dog", [[0, 0], [1, 0], ["1", 2]])]),
                   "{json}: shapes[0] (polygon) point 2 is [\"1\", 2], not [x, y] numbers"),
    "three numbers": (dict(shapes=[_shape("dog", [[0, 0, 0], [1, 1]], "rectangle")]),
                      "{json}: shapes[0] (rectangle) point 0 is [0, 0, 0], not [x, y] numbers"),
    "rectangle of 3": (dict(shapes=[_shape("dog", [[0, 0], [1, 1], [2, 2]], "rectangle")]),
                       "{json}: shapes[0] (rectangle) has 3 points; expected 2 opposite corners or 4 corners"),
    "polygon of 2": (dict(shapes=[_shape("dog", [[0, 0], [1, 1]])]),
                     "{json}: shapes[0] (polygon) has 2 points; a polygon needs at least 3"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_file_is_one_line_naming_it(tmp_path, case):
    fields, expected = BAD_FILES[case]
    _bad(tmp_path, **fields)
    with pytest.raises(InputError) as caught:
        read_labelme(tmp_path)
    assert str(caught.value) == expected.format(json=tmp_path / "a.json", root=tmp_path)


def test_json_that_does_not_parse_names_line_and_column(tmp_path):
    (tmp_path / "a.json").write_text('{\n  "shapes": [],\n  "imagePath": "a.jpg",\n}\n')
    with pytest.raises(InputError) as caught:
        read_labelme(tmp_path)
    assert str(caught.value) == (f"{tmp_path / 'a.json'}:4:1: not valid JSON "
                                 f"(Expecting property name enclosed in double quotes)")
    (tmp_path / "a.json").write_bytes(b'{"shapes": "\xff"}')
    with pytest.raises(InputError) as caught:
        read_labelme(tmp_path)
    assert str(caught.value) == f"{tmp_path / 'a.json'}: not UTF-8 text (invalid start byte at byte 12)"


def test_folder_level_errors(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "coco.json").write_text(json.dumps({"images": []}))
    with pytest.raises(InputError) as caught:
        read_labelme(root)
    assert str(caught.value) == f"{root}: no LabelMe .json files (JSON objects with 'shapes') in this folder or below"

    _image(tmp_path / "outside.jpg", 8, 6)
    _labelme(root / "a.json", "../outside.jpg", 8, 6, [])
    with pytest.raises(InputError) as caught:
        read_labelme(root)
    assert str(caught.value) == f"{root / 'a.json'}: imagePath '../outside.jpg' is outside {root}, the folder read"

    _image(root / "a.jpg", 8, 6)
    _labelme(root / "a.json", "a.jpg", 8, 6, [])
    _labelme(root / "copy" / "a.json", "../a.jpg", 8, 6, [])
    with pytest.raises(InputError) as caught:
        read_labelme(root)
    assert str(caught.value) == f"{root / 'copy' / 'a.json'}: imagePath names a.jpg, which {root / 'a.json'} names too"


def test_file_with_a_byte_order_mark(tmp_path):
    _image(tmp_path / "a.jpg", 8, 6)
    _labelme(tmp_path / "a.json", "a.jpg", 8, 6, [_shape("dog", [[1, 1], [3, 2]], "rectangle")])
    (tmp_path / "a.json").write_bytes("\ufeff".encode("utf-8") + (tmp_path / "a.json").read_bytes())
    assert read_labelme(tmp_path).coco["annotations"][0]["bbox"] == [1.0, 1.0, 2.0, 1.0]


def test_dataset_reads_the_dict_with_masks(tmp_path):
    """The dict goes through CocoDetection(masks=True): the two-part person is one mask covering both parts."""
    data = read_labelme(_folder(tmp_path))
    annotations_file = tmp_path / "instances.json"
    annotations_file.write_text(json.dumps(data.coco))
    dataset = CocoDetection(data.images_root, annotations_file, train=False, masks=True)
    image, target = dataset[0]
    assert image.shape == (3, 10, 20)
    assert target["labels"].tolist() == [2, 1, 3, 1]
    person = target["masks"][2]  # (H, W) uint8
    assert (person[0, 11], person[6, 15], person[4, 12]) == (1, 1, 0)  # the triangle, the rectangle, between them
    assert target["masks"][0][1:8, 2:12].all() and target["masks"][0].sum() == 70  # the 10 x 7 rectangle
