"""fpn/detectors/tiling.py: the tile grid, mapping tile detections back, cut objects, the per-class merge, masks,
and `model.predict(..., tile=)` on a real tiny Faster R-CNN against predicting each tile by hand."""
import pytest
import torch

from fpn.detectors.tiling import (
    Tiling,
    detection_limits,
    merge_detections,
    predict_tiled,
    tile_grid,
    tile_starts,
    touches_inner_edge,
)
from fpn.config import FCOSConfig
from fpn.errors import InputError
from fpn.ops.host_sync import HostSyncCounter
from fpn.ops.boxes import box_iou
from test_predict import tiny_model as full_tiny_model


def tiny_model():
    """test_predict's tiny Faster R-CNN with 50 RoIs per image (fast: many small inputs)."""
    model = full_tiny_model()
    model.config.rpn.pre_nms_top_n_test = model.config.rpn.post_nms_top_n_test = 50
    return model


def test_grid_offsets_last_row_and_column_end_at_the_image_edge():
    # stride floor(64 * 0.75) = 48; x: 0, 48, 96, 144 then 230 - 64 = 166; y: 0, 48 then 150 - 64 = 86
    grid = tile_grid(150, 230, Tiling(64, 0.25))
    xs, ys = [0, 48, 96, 144, 166], [0, 48, 86]
    assert grid == [(x, y, x + 64, y + 64) for y in ys for x in xs]


def test_grid_edge_cases():
    assert tile_grid(64, 64, Tiling(64)) == []  # no larger than a tile: not tiled
    assert tile_grid(30, 50, Tiling(64)) == []
    assert tile_starts(128, 64, 64) == [0, 64]  # exact multiple, overlap 0: no duplicate last tile
    assert tile_grid(128, 192, Tiling(64, 0.0)) == [(x, y, x + 64, y + 64) for y in (0, 64) for x in (0, 64, 128)]
    # one axis shorter than the tile: one window spanning it, never padded beyond the image
    assert tile_grid(50, 100, Tiling(64, 0.5)) == [(0, 0, 64, 50), (32, 0, 96, 50), (36, 0, 100, 50)]
    assert Tiling(100, 0.3).stride == 70 and Tiling(32, 0.99).stride == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 16}, "tile must be an integer >= 32 px, got 16"),
    ({"size": 64.0}, "tile must be an integer >= 32 px, got 64.0"),
    ({"size": 64, "overlap": 1.0}, "overlap must be in [0, 1), got 1.0"),
    ({"size": 64, "overlap": -0.1}, "overlap must be in [0, 1), got -0.1"),
    ({"size": 64, "batch": 0}, "tile_batch must be an integer >= 1, got 0"),
])
def test_bad_values_are_one_line_input_errors(kwargs, message):
    with pytest.raises(InputError) as info:
        Tiling(**kwargs)
    assert str(info.value) == message


def test_bad_value_through_predict():
    with pytest.raises(InputError, match=r"^overlap must be in \[0, 1\), got 1.5$"):
        tiny_model().predict(torch.rand(3, 100, 100), tile=64, overlap=1.5)


def _position_image(height, width):
    """Channel 0 holds x / 1000, channel 1 y / 1000: a tile's first pixel tells the fake model where it is."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([xs / 1000.0, ys / 1000.0, torch.zeros(height, width)]).float()


class FakeModel:
    """Per input: the boxes `boxes_at(x0, y0, h, w)` gives, in the input's pixels, scores 0.9, 0.8, ...; records
    the inputs' sizes per call."""

    def __init__(self, boxes_at):
        self.boxes_at, self.calls = boxes_at, []

    def __call__(self, images):
        self.calls.append([tuple(image.shape[-2:]) for image in images])
        out = []
        for image in images:
            x0, y0 = round(float(image[0, 0, 0]) * 1000), round(float(image[1, 0, 0]) * 1000)
            boxes = torch.tensor(self.boxes_at(x0, y0, *image.shape[-2:]), dtype=torch.float32).reshape(-1, 4)
            d = len(boxes)
            out.append({"boxes": boxes, "scores": 0.9 - 0.1 * torch.arange(d, dtype=torch.float32),
                        "labels": torch.ones(d, dtype=torch.int64)})
        return out


def test_tile_boxes_are_mapped_back_exactly_and_tiles_are_batched():
    # every tile sees one box at (10, 12)-(20, 22) of its own pixels; the whole image none
    model = FakeModel(lambda x0, y0, h, w: [] if (h, w) == (150, 230) else [[10.0, 12.0, 20.0, 22.0]])
    tiling = Tiling(64, 0.25, batch=4)
    merged = predict_tiled(model, [_position_image(150, 230)], tiling, nms_thresh=0.5, detections_per_img=100)[0]
    windows = tile_grid(150, 230, tiling)  # 15 tiles: the boxes overlap nowhere (origins 18+ px apart)
    expected = torch.tensor([[x0 + 10.0, y0 + 12.0, x0 + 20.0, y0 + 22.0] for x0, y0, _, _ in windows])
    assert torch.equal(merged["boxes"], expected)  # equal scores: the earlier tile first
    assert torch.equal(merged["scores"], torch.full((15,), 0.9))
    assert [len(call) for call in model.calls] == [4, 4, 4, 4]  # whole image + 15 tiles, 4 per forward
    assert model.calls[0][:2] == [(150, 230), (64, 64)]


def test_cut_objects_dropped_at_inner_tile_sides_kept_at_image_sides():
    # each tile reports a box reaching its right side; only the last column's right side is the image's
    model = FakeModel(lambda x0, y0, h, w: [] if (h, w) == (64, 160) else [[w - 9.0, 20.0, float(w), 30.0]])
    image = _position_image(64, 160)
    tiling = Tiling(64, 0.25)  # windows x 0, 48, 96
    merged = predict_tiled(model, [image], tiling, nms_thresh=0.5, detections_per_img=100)[0]
    assert torch.equal(merged["boxes"], torch.tensor([[151.0, 20.0, 160.0, 30.0]]))
    kept = predict_tiled(model, [image], Tiling(64, 0.25, drop_edge=False), nms_thresh=0.5,
                         detections_per_img=100)[0]
    assert torch.equal(kept["boxes"], torch.tensor([[55.0, 20.0, 64.0, 30.0], [103.0, 20.0, 112.0, 30.0],
                                                    [151.0, 20.0, 160.0, 30.0]]))


def test_touches_inner_edge_margin_and_sides():
    boxes = torch.tensor([[2.0, 10, 20, 20], [2.5, 10, 20, 20], [10, 10, 62, 20], [10, 10, 61.5, 20],
                          [10, 1.0, 20, 20], [10, 10, 20, 63.0]])
    # window at (48, 48) in a 200x112 image: left, top and right are inner sides, the bottom is the image's
    cut = touches_inner_edge(boxes, (48, 48, 112, 112), (112, 200))
    assert cut.tolist() == [True, False, True, False, True, False]
    assert not touches_inner_edge(boxes, (0, 0, 64, 64), (64, 64)).any()  # the whole image: no inner side


def _part(boxes, scores, labels, window):
    return window, {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.tensor(scores), "labels": torch.tensor(labels, dtype=torch.int64)}


def test_merge_is_per_class_nms_with_cap_and_score_threshold():
    whole = _part([[10.0, 10, 40, 40], [100, 100, 120, 120]], [0.9, 0.3], [1, 2], (0, 0, 200, 200))
    # tile at (5, 5): the same object of class 1 (suppressed), of class 2 (kept), a weak box below the threshold
    tile = _part([[5.0, 5, 35, 35], [5.0, 5, 35, 35], [60, 60, 70, 70]], [0.8, 0.7, 0.2], [1, 2, 1], (5, 5, 105, 105))
    merged = merge_detections([whole, tile], (200, 200), nms_thresh=0.5, detections_per_img=100,
                              score_threshold=0.25)
    assert torch.equal(merged["boxes"], torch.tensor([[10.0, 10, 40, 40], [10, 10, 40, 40], [100, 100, 120, 120]]))
    assert merged["labels"].tolist() == [1, 2, 2]
    assert torch.allclose(merged["scores"], torch.tensor([0.9, 0.7, 0.3]))
    capped = merge_detections([whole, tile], (200, 200), nms_thresh=0.5, detections_per_img=2)
    assert capped["scores"].tolist() == pytest.approx([0.9, 0.7])


def test_merge_of_nothing_is_empty():
    empty = _part([], [], [], (0, 0, 64, 64))
    merged = merge_detections([empty, _part([], [], [], (32, 0, 96, 64))], (64, 96), nms_thresh=0.5,
                              detections_per_img=100)
    assert merged["boxes"].shape == (0, 4) and merged["scores"].shape == (0,) and merged["labels"].shape == (0,)


def test_masks_are_placed_at_the_tile_in_an_image_size_canvas():
    window, det = _part([[1.0, 1, 3, 3], [0, 0, 1, 1]], [0.9, 0.4], [1, 1], (4, 2, 8, 6))
    det["masks"] = torch.zeros(2, 1, 4, 4)
    det["masks"][0, 0, 1:3, 1:3] = 0.75
    whole_masks = torch.zeros(1, 1, 8, 10)
    whole_masks[0, 0, 0, 0] = 1.0
    whole = (0, 0, 10, 8), {"boxes": torch.tensor([[0.0, 0, 1, 1]]), "scores": torch.tensor([0.5]),
                            "labels": torch.tensor([2]), "masks": whole_masks}
    merged = merge_detections([whole, (window, det)], (8, 10), nms_thresh=0.5, detections_per_img=100,
                              drop_edge=False)
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.5, 0.4])
    expected = torch.zeros(3, 1, 8, 10)
    expected[0, 0, 3:5, 5:7] = 0.75  # the tile's (1..2, 1..2) shifted by (x 4, y 2)
    expected[1, 0, 0, 0] = 1.0
    assert torch.equal(merged["masks"], expected)


def test_detection_limits_of_each_detector_kind():
    model = tiny_model()
    assert detection_limits(model.config) == (0.5, 100)
    assert detection_limits(FCOSConfig()) == (0.6, 100)
    model.config.rpn_only = True
    assert detection_limits(model.config) == (model.config.rpn.nms_thresh, model.config.rpn.post_nms_top_n_test)


def _greedy_per_class(boxes, scores, labels, iou_threshold):
    """Reference merge: visit by decreasing score (stable), keep unless a kept box of the class overlaps > t."""
    iou, kept = box_iou(boxes, boxes).tolist(), []
    for i in sorted(range(len(scores)), key=lambda i: -float(scores[i])):
        if all(labels[j] != labels[i] or iou[i][j] <= iou_threshold for j in kept):
            kept.append(i)
    return kept


def test_tiled_predict_on_a_real_model_equals_predicting_each_tile_by_hand():
    model = tiny_model()
    image = torch.rand(3, 110, 150, generator=torch.Generator().manual_seed(3))
    tiled = model.predict(image, tile=64, overlap=0.25, tile_batch=1, score_threshold=0.1)[0]
    windows = [(0, 0, 150, 110)] + tile_grid(110, 150, Tiling(64, 0.25))
    boxes, scores, labels = [], [], []
    for x0, y0, x1, y1 in windows:
        det = model.predict(image[:, y0:y1, x0:x1], score_threshold=0.1)[0]
        inner = [(x0 > 0, 0, "<="), (y0 > 0, 1, "<="), (x1 < 150, 2, ">="), (y1 < 110, 3, ">=")]
        for box, score, label in zip(det["boxes"], det["scores"], det["labels"]):
            size = (x1 - x0, y1 - y0, x1 - x0, y1 - y0)
            cut = any(is_inner and (box[k] <= 2.0 if op == "<=" else box[k] >= size[k] - 2.0)
                      for is_inner, k, op in inner)
            if not cut:
                boxes.append(box + torch.tensor([x0, y0, x0, y0], dtype=box.dtype))
                scores.append(score)
                labels.append(int(label))
    boxes, scores = torch.stack(boxes), torch.stack(scores)
    kept = _greedy_per_class(boxes, scores, labels, 0.5)[:100]
    assert len(kept) > 10  # the tiny model's boxes overlap and are suppressed: the merge has work to do
    assert torch.allclose(tiled["boxes"], boxes[kept], atol=1e-4)
    assert torch.equal(tiled["scores"], scores[kept])
    assert tiled["labels"].tolist() == [labels[i] for i in kept]


def test_an_image_no_larger_than_a_tile_gives_the_plain_prediction():
    model = tiny_model()
    image = torch.rand(3, 60, 80, generator=torch.Generator().manual_seed(4))
    plain, tiled = model.predict(image)[0], model.predict(image, tile=96, tile_whole=False)[0]
    assert len(plain["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(plain[key], tiled[key])


def test_merge_host_syncs_one_selection_plus_one_read_for_masks():
    whole = _part([[10.0, 10, 40, 40], [100, 100, 120, 120]], [0.9, 0.3], [1, 2], (0, 0, 200, 200))
    tile = _part([[5.0, 5, 35, 35], [60, 60, 70, 70]], [0.8, 0.2], [1, 1], (5, 5, 105, 105))
    with HostSyncCounter() as counter:
        merge_detections([whole, tile], (200, 200), nms_thresh=0.5, detections_per_img=100, score_threshold=0.25)
    ours = {site: count for (_, site), count in counter.by_site.items() if "fpn/detectors/tiling.py" in site}
    assert sum(ours.values()) == 1  # the selection; the rest is the merge NMS's own (fpn/ops/nms.py)
    whole[1]["masks"], tile[1]["masks"] = torch.zeros(2, 1, 200, 200), torch.zeros(2, 1, 100, 100)
    with HostSyncCounter() as counter:
        merge_detections([whole, tile], (200, 200), nms_thresh=0.5, detections_per_img=100)
    assert sum(count for (_, site), count in counter.by_site.items() if "fpn/detectors/tiling.py" in site) == 2
