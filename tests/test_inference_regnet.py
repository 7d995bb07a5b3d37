"""optimize_for_inference (fpn/deploy/inference.py) on a RegNetX-backbone Faster R-CNN: every conv/norm pair of the
trunk (stem, the X blocks' f.a / f.b / f.c, the projections) is folded, and the detections stay the same."""
import pytest
import torch

from fpn import FasterRCNNFPN
from fpn.backbones import FrozenBatchNorm2d
from fpn.config import FasterRCNNConfig
from fpn.deploy.inference import conv_norm_pairs, optimize_for_inference
from test_backbone_regnet import torchvision_regnet, trunk_state


def _frozen_bn_regnet_detector(variant: str) -> FasterRCNNFPN:
    config = FasterRCNNConfig(variant=variant)
    config.backbone.name, config.backbone.norm, config.backbone.trainable_stages = "regnet_x_400mf", "frozen_bn", 5
    config.fpn.out_channels, config.roi_heads.representation_size = 32, 64
    config.input.min_size, config.input.max_size, config.input.train_min_sizes = 128, 160, (128,)
    torch.manual_seed(0)
    model = FasterRCNNFPN(3, config).eval()
    # torchvision's trunk, seeded, with non-trivial BN statistics: what an ImageNet file would hold
    state = {k: v for k, v in trunk_state(torchvision_regnet("regnet_x_400mf", seed=5)).items()
             if not k.endswith("num_batches_tracked")}
    if variant == "c4":  # block4 now lives in the box head (Res5Head.res5)
        head = {k[len("trunk_output.block4."):]: v for k, v in state.items() if k.startswith("trunk_output.block4.")}
        model.roi_heads.box_head.res5.load_state_dict(head)
        state = {k: v for k, v in state.items() if not k.startswith("trunk_output.block4.")}
    model.backbone.load_state_dict(state)
    torch.nn.init.normal_(model.roi_heads.predictor.cls_score.weight, std=0.3)  # spread the scores: detections
    return model


def test_conv_norm_pairs_find_every_regnet_norm():
    model = _frozen_bn_regnet_detector("fpn")
    norms = {id(getattr(parent, norm)) for parent, _, norm in conv_norm_pairs(model.backbone)}
    frozen = {id(m) for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)}
    assert norms == frozen and len(frozen) == 1 + 3 * 22 + 4  # stem, 3 per X block (22 blocks), 4 projections


@pytest.mark.parametrize("variant", ["fpn", "c4"])
def test_folded_frozen_bn_regnet_gives_the_same_detections(variant):
    model = _frozen_bn_regnet_detector(variant)
    num_norms = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    fast = optimize_for_inference(model)
    assert fast.folded_norms == num_norms == 1 + 3 * 22 + 4
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fast.modules())
    image = torch.rand(3, 120, 150, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, found = model([image])[0], fast([image])[0]
    assert expected["boxes"].shape[0] > 0 and torch.equal(found["labels"], expected["labels"])
    assert torch.allclose(found["boxes"], expected["boxes"], rtol=0, atol=1e-3), \
        (found["boxes"] - expected["boxes"]).abs().max()
    assert torch.allclose(found["scores"], expected["scores"], rtol=0, atol=1e-5)
