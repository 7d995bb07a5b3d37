"""fpn.engine.training_data.image_cache_line: --cache-images keeps decoded images only where they fit in a quarter
of the machine's memory (the CPU presets default to it, and they also train on people's own, larger folders)."""
import json

from PIL import Image

from fpn.data.coco import CocoDetection
from fpn.engine import training_data
from fpn.engine.training_data import image_cache_line


def _set(tmp_path, name, sizes):
    folder = tmp_path / name
    folder.mkdir()
    images = []
    for index, (width, height) in enumerate(sizes, start=1):
        Image.new("RGB", (width, height)).save(folder / f"{index}.png")
        images.append({"id": index, "file_name": f"{index}.png", "width": width, "height": height})
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    return CocoDetection(folder, path, train=False, cache_images=True)


def test_the_cache_stays_where_it_fits_and_goes_where_it_does_not(tmp_path, monkeypatch):
    train, val = _set(tmp_path, "train", [(100, 50), (40, 30)]), _set(tmp_path, "val", [(10, 10)])
    need = 3 * (100 * 50 + 40 * 30) + 3 * 100  # 18,900 bytes per loading process
    monkeypatch.setattr(training_data, "physical_memory", lambda: 4 * need)  # a quarter: exactly one process
    assert image_cache_line(train, val, workers=0) == "kept decoded after their first read (0.00 GB per process)"
    assert train.cache_images and val.cache_images
    line = image_cache_line(train, val, workers=2)  # each worker would keep its own copy: twice the quarter
    assert line == ("read from disk every time: decoded they would take 0.0 GB, over a quarter of this machine's "
                    "0 GB (--cache-images)")
    assert not train.cache_images and not val.cache_images
    train[0]
    assert train._decoded == {}  # nothing kept


def test_physical_memory_is_the_machines():
    assert training_data.physical_memory() > 1 << 30
