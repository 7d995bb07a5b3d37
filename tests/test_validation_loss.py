"""fpn.engine.validation_loss: the training loss terms on a validation set — a batch-size-weighted mean, the same
at every call, at the test size, with eval-mode norms, leaving the global RNG and every module's mode as they
were; Mask R-CNN with and without target masks, FCOS's and an RPN's own terms."""
import pytest
import torch

from fpn import FasterRCNNFPN, FCOSFPN, MaskRCNNFPN
from fpn.engine.validation_loss import batch_losses, loss_mode, validation_losses
from test_fcos import tiny_config as fcos_config
from test_mask_rcnn import data as mask_data, tiny_config as mask_config
from test_model_train import tiny_config

CPU = torch.device("cpu")
BOX_TERMS = ["loss_box_reg", "loss_classifier", "loss_objectness", "loss_rpn_box_reg"]


def samples(sizes=((80, 100), (100, 80), (90, 90))):
    """(image, target) pairs: random images of `sizes` with two boxes each."""
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(3, h, w, generator=g),
             {"boxes": torch.tensor([[5.0, 6.0, 50.0, 60.0], [30.0, 20.0, 75.0, 70.0]]), "labels": torch.tensor([1, 2])})
            for h, w in sizes]


def test_the_value_is_the_batch_size_weighted_mean_and_the_same_at_every_call():
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=3, config=tiny_config())
    data = samples()
    rng_before = torch.get_rng_state()
    got = validation_losses(model, data, device=CPU, batch_size=2, seed=5)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the training's random stream is untouched
    assert validation_losses(model, data, device=CPU, batch_size=2, seed=5) == got
    # by hand: the same seeded draws, batch [0, 1] then [2], each batch's mean weighted by its image count
    torch.manual_seed(5)
    with torch.no_grad(), loss_mode(model):
        first = batch_losses(model, [data[0][0], data[1][0]], [data[0][1], data[1][1]])
        second = batch_losses(model, [data[2][0]], [data[2][1]])
    expected = {f"val_{k}": (2 * first[k].item() + second[k].item()) / 3 for k in BOX_TERMS}
    assert sorted(got) == sorted([*expected, "val_loss"])
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    assert got["val_loss"] == pytest.approx(sum(expected.values()), rel=1e-6)
    assert validation_losses(model, data, device=CPU, batch_size=2, seed=6) != got  # other sampling draws


def test_images_go_in_at_the_test_size_with_norms_in_eval_mode_and_modes_are_restored():
    config = tiny_config()
    config.backbone.norm = "bn"  # running statistics that a training-mode pass would update
    config.input.min_size, config.input.max_size, config.input.train_min_sizes = 96, 200, (64,)
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=3, config=config).train()
    model.backbone.eval()  # a mode of its own, restored as it was
    seen = []
    real = model.forward_heads

    def forward_heads(batch, features, targets):
        seen.append(list(batch.image_sizes))
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms and not any(m.training for m in norms) and model.rpn.training
        return real(batch, features, targets)

    model.forward_heads = forward_heads
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    losses = validation_losses(model, samples(), device=CPU, batch_size=2)
    assert seen == [[(96, 120), (120, 96)], [(96, 96)]]  # shorter side 96 (test), not 64 (training)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    assert model.training and not model.backbone.training and model.rpn.training
    assert all(v > 0 for v in losses.values())


def test_mask_rcnn_has_a_mask_term_with_target_masks_and_the_box_terms_without():
    torch.manual_seed(0)
    model = MaskRCNNFPN(num_classes=3, config=mask_config())
    images, targets = mask_data()
    with_masks = validation_losses(model, list(zip(images, targets)), device=CPU, batch_size=2)
    boxes_only = [(image, {k: v for k, v in target.items() if k != "masks"}) for image, target in zip(images, targets)]
    without = validation_losses(model, boxes_only, device=CPU, batch_size=2)
    assert sorted(with_masks) == sorted([f"val_{k}" for k in BOX_TERMS + ["loss_mask"]] + ["val_loss"])
    assert sorted(without) == sorted([f"val_{k}" for k in BOX_TERMS] + ["val_loss"])
    for key in BOX_TERMS:  # the same draws: the mask branch comes after the sampling
        assert without[f"val_{key}"] == with_masks[f"val_{key}"]
    assert with_masks["val_loss"] == pytest.approx(without["val_loss"] + with_masks["val_loss_mask"], rel=1e-6)


def test_fcos_and_an_rpn_alone_give_their_own_terms():
    torch.manual_seed(0)
    fcos = validation_losses(FCOSFPN(num_classes=3, config=fcos_config()), samples(), device=CPU, batch_size=2)
    assert sorted(fcos) == ["val_bbox_ctrness", "val_bbox_regression", "val_classification", "val_loss"]
    config = tiny_config()
    config.rpn_only = True
    rpn = validation_losses(FasterRCNNFPN(num_classes=3, config=config), samples(), device=CPU)
    assert sorted(rpn) == ["val_loss", "val_loss_objectness", "val_loss_rpn_box_reg"]
    assert rpn["val_loss"] == pytest.approx(rpn["val_loss_objectness"] + rpn["val_loss_rpn_box_reg"])


def test_an_empty_set_has_no_validation_loss():
    model = FasterRCNNFPN(num_classes=3, config=tiny_config())
    assert validation_losses(model, [], device=CPU) == {}


@pytest.mark.parametrize("make", ["faster", "mask"])
def test_evaluate_coco_takes_the_loss_from_its_own_forward_passes(tmp_path, make):
    """evaluate_coco(val_loss=True) runs the backbone once per batch: its detections (and so its APs) are those
    of the plain evaluation, and its loss terms equal a validation-loss pass of their own, draw for draw."""
    from fpn.data.coco import CocoDetection
    from fpn.data.synthetic import generate_synthetic_coco
    from fpn.engine.evaluation import evaluate_coco

    paths = generate_synthetic_coco(tmp_path / "syn", 2, num_val=5, seed=3, min_size=64, max_size=96,
                                    progress=False)
    data = CocoDetection(paths["val_images"], paths["val_annotations"], train=False, masks=make == "mask")
    torch.manual_seed(0)
    config = mask_config() if make == "mask" else tiny_config()
    model = (MaskRCNNFPN if make == "mask" else FasterRCNNFPN)(num_classes=data.num_classes, config=config).eval()
    model.roi_heads.cfg.score_thresh = 0.0  # detections from random weights, so that the APs compare something
    plain = evaluate_coco(model, data, device=CPU, batch_size=2, output_dir=tmp_path / "plain")
    shared = evaluate_coco(model, data, device=CPU, batch_size=2, output_dir=tmp_path / "shared", val_loss=True,
                           loss_seed=4)
    alone = validation_losses(model, data, device=CPU, batch_size=2, seed=4)
    assert not model.training and set(alone) == {key for key in shared if key.startswith("val_")}
    terms = BOX_TERMS + (["loss_mask"] if make == "mask" else [])
    assert sorted(alone) == sorted([f"val_{term}" for term in terms] + ["val_loss"])
    for key, value in alone.items():
        assert shared[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert {k: v for k, v in shared.items() if not k.startswith("val_")} == plain
    results = [(tmp_path / folder / "eval_results.json").read_text() for folder in ("plain", "shared")]
    assert results[0] == results[1] and len(results[0]) > 2  # the same detections, and some
