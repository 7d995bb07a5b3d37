import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fpn.deploy.visualize import (
    MASK_ALPHA,
    PALETTE,
    colour_for_label,
    draw_detections,
    draw_ground_truth,
    font_size_for,
    line_width_for,
    save_detection_picture,
    text_colour_for,
)

NAMES = {1: "person", 2: "bicycle", 3: "car"}
GREY = (128, 128, 128)


def _image(width=200, height=150, colour=GREY):
    return Image.new("RGB", (width, height), colour)


def _changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    """(H, W) bool: pixels that differ."""
    return (np.asarray(before, dtype=np.int16) != np.asarray(after, dtype=np.int16)).any(axis=2)


def test_box_outline_drawn_in_class_colour_and_input_untouched():
    image = _image()
    original = np.asarray(image).copy()
    out = draw_detections(image, torch.tensor([[50.0, 60.0, 150.0, 130.0]]), torch.tensor([3]),
                          torch.tensor([0.9]), NAMES)
    assert out is not image and out.size == image.size and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), original)
    pixels = np.asarray(out)
    colour = np.array(colour_for_label(3))
    # Left edge and bottom edge of the outline (the label sits above the top-left corner).
    np.testing.assert_array_equal(pixels[100, 50], colour)
    np.testing.assert_array_equal(pixels[130, 100], colour)
    # The box interior away from the label and everything far outside are unchanged.
    np.testing.assert_array_equal(pixels[110, 120], GREY)
    np.testing.assert_array_equal(pixels[5, 190], GREY)
    changed = _changed(image, out)
    assert changed[60:131, 50:151].any()
    # Nothing changes right of/below the box, except what the label (top-left) covers.
    assert not changed[135:, :].any() and not changed[:, 155:].any()


def test_label_sits_above_box_on_filled_background():
    image = _image()
    out = draw_detections(image, [[50.0, 60.0, 150.0, 130.0]], [1], [0.93], NAMES)
    changed = _changed(image, out)
    rows = np.nonzero(changed[:, 50:150].any(axis=1))[0]
    assert rows.min() < 60  # the label is above the box's top edge
    label_band = np.asarray(out)[rows.min():60, 50:55]
    assert (label_band == np.array(colour_for_label(1))).all(axis=-1).mean() > 0.5


def test_nothing_drawn_below_threshold():
    image = _image()
    boxes = torch.tensor([[10.0, 10.0, 60.0, 60.0], [100.0, 40.0, 190.0, 140.0]])
    out = draw_detections(image, boxes, torch.tensor([1, 2]), torch.tensor([0.49, 0.2]), NAMES)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image))
    # A score exactly at the threshold is drawn; only that box's region changes.
    out = draw_detections(image, boxes, torch.tensor([1, 2]), torch.tensor([0.3, 0.2]), NAMES,
                          score_threshold=0.3)
    changed = _changed(image, out)
    assert changed[10:61, 10:61].any()
    assert not changed[70:, 70:].any()


def test_empty_detections_return_identical_copy():
    image = _image()
    for boxes, labels, scores in (
        (torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), torch.zeros((0,))),
        ([], [], []),
    ):
        out = draw_detections(image, boxes, labels, scores, NAMES)
        assert out is not image
        assert out.mode == image.mode and out.size == image.size
        np.testing.assert_array_equal(np.asarray(out), np.asarray(image))


@pytest.mark.parametrize("box", [
    [0.0, 0.0, 80.0, 50.0],  # top-left corner: no room above, label goes inside
    [150.0, 0.0, 199.0, 40.0],  # top-right corner: label shifted left
    [170.0, 120.0, 199.0, 149.0],  # bottom-right, small box
    [-30.0, -20.0, 230.0, 170.0],  # larger than the image
])
def test_label_stays_inside_image_at_border(box):
    image = _image()
    out = draw_detections(image, [box], [2], [0.99], {2: "a-rather-long-class-name"})
    changed = _changed(image, out)
    # The label's filled background (class colour) is fully inside: locate it by colour and check its text
    # pixels (black or white) are inside it too, i.e. the text was not cut off by the border.
    colour = np.array(colour_for_label(2))
    text = np.array(text_colour_for(colour_for_label(2)))
    pixels = np.asarray(out)
    # Anti-aliased glyphs: count pixels close to the text colour.
    text_mask = (np.abs(pixels.astype(np.int16) - text).sum(axis=-1) < 120) & changed
    assert text_mask.sum() > 20  # the text was drawn
    ys, xs = np.nonzero(text_mask)
    # Text pixels are surrounded by the label background: a pad of class colour separates them from any border.
    assert ys.min() >= 1 and xs.min() >= 1 and ys.max() <= 148 and xs.max() <= 198
    assert (pixels[ys.min() - 1, xs.min():xs.max() + 1] == colour).all(axis=-1).any()


def test_text_colour_contrasts_with_background():
    assert text_colour_for((255, 255, 0)) == (0, 0, 0)
    assert text_colour_for((0, 0, 128)) == (255, 255, 255)
    assert text_colour_for((255, 255, 255)) == (0, 0, 0)
    assert text_colour_for((0, 0, 0)) == (255, 255, 255)


def test_palette_is_fixed_by_label():
    assert colour_for_label(3) == colour_for_label(3 + len(PALETTE)) == PALETTE[3]
    assert len(set(PALETTE)) == len(PALETTE)


def test_line_width_and_font_scale_with_image_size():
    assert line_width_for(100, 100) == 1
    assert line_width_for(1333, 800) == 3
    assert font_size_for(64, 64) == 10
    assert font_size_for(1333, 800) == 20
    assert font_size_for(8000, 8000) == 40
    thin = _changed(_image(), draw_detections(_image(), [[20.0, 20.0, 80.0, 80.0]], [1], [0.9], NAMES))
    big = _image(1200, 900)
    thick = _changed(big, draw_detections(big, [[200.0, 200.0, 800.0, 800.0]], [1], [0.9], NAMES))
    assert thin[50, 15:30].sum() == 1  # a 1 px left edge at 150 px
    assert thick[500, 190:215].sum() == line_width_for(1200, 900) == 3


def test_unknown_label_written_as_number_and_grey_image_converted():
    image = Image.new("L", (120, 90), 100)
    out = draw_detections(image, [[10.0, 30.0, 60.0, 80.0]], [57], [0.8], NAMES)
    assert out.mode == "RGB" and image.mode == "L"
    np.testing.assert_array_equal(np.asarray(out)[60, 10], colour_for_label(57))


def test_highest_score_drawn_on_top():
    image = _image()
    boxes = [[40.0, 40.0, 120.0, 120.0], [40.0, 40.0, 120.0, 120.0]]
    out = draw_detections(image, boxes, [1, 2], [0.95, 0.6], NAMES)
    np.testing.assert_array_equal(np.asarray(out)[80, 40], colour_for_label(1))
    out = draw_detections(image, boxes, [1, 2], [0.6, 0.95], NAMES)
    np.testing.assert_array_equal(np.asarray(out)[80, 40], colour_for_label(2))


@pytest.mark.parametrize("boxes, labels, scores, message", [
    ([[0.0, 0.0, 10.0]], [1], [0.9], "shape"),
    ([[0.0, 0.0, 10.0, 10.0]], [1, 2], [0.9], "same length"),
    ([[10.0, 0.0, 5.0, 10.0]], [1], [0.9], "box 0"),
    ([[0.0, 0.0, float("nan"), 10.0]], [1], [0.9], "not finite"),
])
def test_bad_input_raises_value_error(boxes, labels, scores, message):
    with pytest.raises(ValueError, match=message):
        draw_detections(_image(), boxes, labels, scores, NAMES)
    with pytest.raises(ValueError, match="PIL"):
        draw_detections(np.zeros((10, 10, 3)), [], [], [], NAMES)


TEAL = (51, 153, 102)  # the test images' colour: no anti-aliased black-on-white title pixel has it


class _Shapes:
    """Images of TEAL with one ground-truth square (label 1) at x 10..50, y 12..40; the last has no boxes."""

    class_names = {1: "square", 2: "disc"}

    def __init__(self, n=3):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        image = torch.tensor(TEAL, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 60, 80).clone()
        boxes = torch.tensor([[10.0, 12.0, 50.0, 40.0]]) if index < self.n - 1 else torch.zeros(0, 4)
        return image, {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)}


class _Predicts(nn.Module):
    """A confident disc (label 2) at x 55..75, y 30..55 and a square scoring below the threshold."""

    def forward(self, images):
        assert not self.training
        return [{"boxes": torch.tensor([[55.0, 30.0, 75.0, 55.0], [5.0, 5.0, 20.0, 20.0]]),
                 "scores": torch.tensor([0.9, 0.3]), "labels": torch.tensor([2, 1])} for _ in images]


def _runs(mask_1d):
    """(start, stop) of the runs of True."""
    edges = np.diff(np.concatenate(([0], mask_1d.astype(np.int8), [0])))
    return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]))


def test_detection_picture_shows_ground_truth_above_predictions(tmp_path):
    model = _Predicts().train()
    path = save_detection_picture(model, _Shapes(), tmp_path / "pics" / "d.png", device=torch.device("cpu"),
                                  num_images=4)
    assert path == tmp_path / "pics" / "d.png" and model.training  # the mode is restored
    pixels = np.asarray(Image.open(path).convert("RGB"))
    teal = (pixels == TEAL).all(axis=-1)
    rows, columns = _runs(teal.any(axis=1)), _runs(teal.any(axis=0))
    assert [b - a for a, b in rows] == [60, 60]  # two panels per image: ground truth above, predictions below
    assert [b - a for a, b in columns] == [80, 80, 80]  # num_images=4, but the data set has 3
    (truth_y, pred_y), (x0, _) = [a for a, _ in rows], columns[0]
    square, disc = np.array(colour_for_label(1)), np.array(colour_for_label(2))
    # Ground truth: the square's left and bottom edges in its class colour; no prediction drawn there.
    np.testing.assert_array_equal(pixels[truth_y + 35, x0 + 10], square)
    np.testing.assert_array_equal(pixels[truth_y + 40, x0 + 30], square)
    np.testing.assert_array_equal(pixels[truth_y + 50, x0 + 55], TEAL)
    # Predictions: the disc above the threshold; neither the ground truth nor the 0.3 square.
    np.testing.assert_array_equal(pixels[pred_y + 50, x0 + 55], disc)
    np.testing.assert_array_equal(pixels[pred_y + 35, x0 + 10], TEAL)
    np.testing.assert_array_equal(pixels[pred_y + 15, x0 + 5], TEAL)
    # Each panel has a title (dark text) in the strip above it.
    for top in (truth_y, pred_y):
        strip = pixels[max(0, top - 16):top, x0:x0 + 80]
        assert (strip.max(axis=-1) < 100).any()
    # The last image has no ground truth: its upper panel is plain.
    last = columns[-1][0]
    assert teal[truth_y:truth_y + 60, last:last + 80].all()


def test_detection_picture_of_an_empty_data_set_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        save_detection_picture(_Predicts(), _Shapes(n=0), tmp_path / "d.png", device=torch.device("cpu"))


def test_ground_truth_is_labelled_with_the_name_alone():
    image = _image()
    truth = draw_ground_truth(image, [[50.0, 60.0, 150.0, 130.0]], [1], NAMES)
    scored = draw_detections(image, [[50.0, 60.0, 150.0, 130.0]], [1], [0.93], NAMES)
    np.testing.assert_array_equal(np.asarray(truth)[100, 50], colour_for_label(1))
    # "person" is a shorter label than "person 0.93": the filled background ends further left.
    width = [_changed(image, out)[40:58, 50:].any(axis=0).sum() for out in (truth, scored)]
    assert width[0] < width[1]
    np.testing.assert_array_equal(np.asarray(draw_ground_truth(image, torch.zeros(0, 4), [], NAMES)),
                                  np.asarray(image))


def _blend(colour, under=GREY):
    """A mask pixel: MASK_ALPHA of the class colour over the image's."""
    return np.rint(np.array(under) * (1 - MASK_ALPHA) + np.array(colour) * MASK_ALPHA).astype(np.uint8)


def test_masks_are_filled_translucent_under_their_boxes():
    image = _image()
    boxes = [[20.0, 30.0, 100.0, 120.0], [120.0, 30.0, 190.0, 120.0]]
    masks = torch.zeros(2, 150, 200, dtype=torch.bool)
    masks[0, 50:100, 40:80] = True
    masks[1, 50:100, 140:170] = True
    out = draw_detections(image, boxes, [1, 3], [0.9, 0.3], NAMES, masks=masks)
    pixels = np.asarray(out)
    np.testing.assert_array_equal(pixels[70, 60], _blend(colour_for_label(1)))  # inside the drawn mask
    np.testing.assert_array_equal(pixels[110, 60], GREY)  # inside the box, outside its mask
    np.testing.assert_array_equal(pixels[70, 150], GREY)  # the mask of a detection below the threshold
    np.testing.assert_array_equal(pixels[50:100, 20], np.broadcast_to(colour_for_label(1), (50, 3)))  # box on top
    # the boxes and labels are those drawn without masks, over the fills
    plain = np.asarray(draw_detections(image, boxes, [1, 3], [0.9, 0.3], NAMES))
    differs = (pixels != plain).any(axis=-1)
    assert differs[50:100, 40:80].all() and differs.sum() == 50 * 40
    # a later (higher-scoring) mask covers an earlier one; RGBA keeps its alpha; empty masks change nothing
    both = draw_detections(image, [boxes[0]] * 2, [1, 2], [0.6, 0.9], NAMES, masks=masks[[0, 0]])
    np.testing.assert_array_equal(np.asarray(both)[70, 60], _blend(colour_for_label(2), _blend(colour_for_label(1))))
    rgba = draw_detections(Image.new("RGBA", (200, 150), (*GREY, 77)), boxes, [1, 3], [0.9, 0.3], NAMES, masks=masks)
    np.testing.assert_array_equal(np.asarray(rgba)[70, 60], [*_blend(colour_for_label(1)), 77])
    nothing = draw_detections(image, boxes, [1, 3], [0.9, 0.3], NAMES, masks=torch.zeros(2, 150, 200))
    np.testing.assert_array_equal(np.asarray(nothing), plain)


def test_masks_of_the_wrong_shape_are_named():
    with pytest.raises(ValueError, match=r"masks: expected shape \(D, H, W\) = \(1, 150, 200\) .* got \(1, 150, 199\)"):
        draw_detections(_image(), [[0.0, 0.0, 10.0, 10.0]], [1], [0.9], NAMES, masks=torch.zeros(1, 150, 199))


class _PredictsMasks(_Predicts):
    """_Predicts with masks: the disc's box filled (probability 0.9), the square's empty."""

    def forward(self, images):
        outputs = super().forward(images)
        for output, image in zip(outputs, images):
            masks = torch.zeros(2, 1, *image.shape[1:])
            masks[0, 0, 30:55, 55:75] = 0.9
            output["masks"] = masks
        return outputs


def test_detection_picture_fills_the_predicted_and_true_masks(tmp_path):
    class WithMasks(_Shapes):
        def __getitem__(self, index):
            image, target = super().__getitem__(index)
            target["masks"] = torch.zeros(len(target["boxes"]), 60, 80, dtype=torch.uint8)
            target["masks"][:, 20:30, 20:40] = 1
            return image, target

    path = save_detection_picture(_PredictsMasks(), WithMasks(2), tmp_path / "d.png", device=torch.device("cpu"))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    teal = (pixels == TEAL).all(axis=-1)
    (truth_y, _), (pred_y, _) = _runs(teal.any(axis=1))
    x0 = _runs(teal.any(axis=0))[0][0]
    np.testing.assert_array_equal(pixels[truth_y + 25, x0 + 30], _blend(colour_for_label(1), TEAL))
    np.testing.assert_array_equal(pixels[pred_y + 40, x0 + 65], _blend(colour_for_label(2), TEAL))
    np.testing.assert_array_equal(pixels[pred_y + 25, x0 + 30], TEAL)
