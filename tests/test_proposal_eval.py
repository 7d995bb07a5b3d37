"""Proposal recall: COCO average recall worked out by hand, the limits 100 vs 1000, crowd boxes, no proposals,
perfect proposals, the scale to the original pixels, two processes, and the RPN-only twin of a full detector."""
import contextlib
import io
import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from torch import nn

from fpn.engine import distributed
from fpn.detectors.faster_rcnn import FasterRCNNFPN
from fpn.engine.proposal_eval import RECALL_NAMES, evaluate_proposals, format_recall, proposal_recall, rpn_only_model
from test_ddp import free_port, leave_without_teardown

# Two 400 x 400 images. (image id, category id, box xywh, iscrowd); areas: small < 32^2 = 1024 <= medium <= 96^2
# = 9216 <= large. The categories differ on purpose: recall is class-agnostic.
GT = [
    (1, 1, [0, 0, 100, 100], 0),  # A large (10000)
    (1, 2, [200, 0, 50, 40], 0),  # B medium (2000)
    (1, 3, [300, 0, 20, 20], 0),  # C small (400)
    (2, 1, [0, 0, 120, 100], 0),  # D large (12000)
    (2, 2, [200, 0, 50, 50], 1),  # E medium crowd (2500): not counted
    (2, 3, [300, 0, 40, 40], 0),  # F medium (1600): no proposal near it
]
DECOY = [0.0, 300.0, 10.0, 310.0]  # xyxy, overlaps no ground truth
# (image id, box xyxy in the 400 x 400 pixels, score), each image's proposals by decreasing score
PROPOSALS = [
    (1, [0.0, 0.0, 100.0, 95.0], 0.9),  # A: IoU 9500 / 10000 = 0.95
    (1, [200.0, 0.0, 250.0, 20.0], 0.8),  # B: IoU 1000 / 2000 = 0.5
    (1, [300.0, 0.0, 320.0, 15.0], 0.7),  # C: IoU 300 / 400 = 0.75
    (2, [200.0, 0.0, 250.0, 50.0], 0.95),  # exactly on the crowd box E
    *[(2, DECOY, 0.9)] * 100,  # ranks 2..101 of image 2
    (2, [0.0, 0.0, 120.0, 95.0], 0.5),  # D: IoU 11400 / 12000 = 0.95, but ranked 102nd
]
# The IoU thresholds are 0.50, 0.55, ..., 0.95 (np.linspace, in which 0.5, 0.75 and 0.95 are exact); a proposal
# of IoU u hits every threshold t <= u: u = 0.95 hits 10 of them, u = 0.75 six (0.50..0.75), u = 0.5 one.
# Counted boxes: A, B, C, D, F (the crowd box E is ignored, and the proposal on it neither hits nor misses).
# Recall at one threshold = hits / boxes; AR = its mean over the 10 thresholds = (sum of hits) / (10 * boxes).
EXPECTED = {
    "AR100": (10 + 1 + 6 + 0 + 0) / 50,  # 0.34: D's proposal is beyond the first 100 of image 2
    "AR1k": (10 + 1 + 6 + 10 + 0) / 50,  # 0.54
    "AR_s": 6 / 10,  # C
    "AR_m": (1 + 0) / 20,  # B, F (E would add 10 hits of its own if crowd boxes counted)
    "AR_l": (10 + 10) / 20,  # A, D
}


def _coco(gt=GT, images=(1, 2)):
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": 400, "height": 400, "file_name": f"{i}.png"} for i in images],
        "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                         "iscrowd": crowd} for k, (i, c, b, crowd) in enumerate(gt)],
        "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _results(proposals, category_id=2):
    return [{"image_id": i, "category_id": category_id, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s}
            for i, (x0, y0, x1, y1), s in proposals]


def test_hand_computed_recall():
    metrics = proposal_recall(_coco(), _results(PROPOSALS))
    assert set(metrics) == set(RECALL_NAMES)
    assert metrics == pytest.approx(EXPECTED, abs=1e-12)


def test_no_proposals_score_zero_and_empty_area_ranges_minus_one():
    assert proposal_recall(_coco(), []) == {name: 0.0 for name in RECALL_NAMES}
    only_large = _coco(GT[:1])
    assert proposal_recall(only_large, []) == {"AR100": 0.0, "AR1k": 0.0, "AR_s": -1.0, "AR_m": -1.0, "AR_l": 0.0}


def test_one_perfect_proposal_per_box_scores_one():
    perfect = [(i, [x, y, x + w, y + h], 1.0) for i, _, (x, y, w, h), crowd in GT if not crowd]
    assert proposal_recall(_coco(), _results(perfect)) == {name: 1.0 for name in RECALL_NAMES}
    only_large = proposal_recall(_coco(GT[:1]), _results(perfect[:1]), image_ids=[1])
    assert only_large == {"AR100": 1.0, "AR1k": 1.0, "AR_s": -1.0, "AR_m": -1.0, "AR_l": 1.0}


def test_format_recall_table():
    lines = format_recall({"AR100": 0.34, "AR1k": 0.54, "AR_s": -1.0, "AR_m": 0.05, "AR_l": 1.0}).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == list(RECALL_NAMES)
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["0.340", "0.540", "-", "0.050", "1.000"]


class _HandSet(torch.utils.data.Dataset):
    """The two images of GT at half their size (200 x 200), each image's pixels holding its id."""

    def __init__(self):
        self.coco = _coco()
        self.image_ids = [1, 2]

    def __len__(self):
        return 2

    def __getitem__(self, index):
        image_id = self.image_ids[index]
        return torch.full((3, 200, 200), float(image_id)), {"image_id": image_id, "orig_size": (400, 400)}


class _Proposer(nn.Module):
    """An RPN-only stub: PROPOSALS of the image whose id its pixels hold, in the pixels of the image it is given
    (half the original's). `config.rpn_only` as the real model's."""

    def __init__(self, rpn_only=True):
        super().__init__()
        self.config = type("Config", (), {"rpn_only": rpn_only})()
        self.modes = []

    def forward(self, images):
        self.modes.append(self.training)
        outputs = []
        for image in images:
            mine = [(box, score) for i, box, score in PROPOSALS if i == int(image[0, 0, 0])]
            boxes = torch.tensor([box for box, _ in mine]).reshape(-1, 4) / 2  # xyxy, half-size pixels
            outputs.append({"boxes": boxes, "scores": torch.tensor([s for _, s in mine]),
                            "labels": torch.ones(len(mine), dtype=torch.int64)})
        return outputs


def test_evaluate_proposals_scales_to_the_original_pixels_and_writes_metrics(tmp_path):
    model = _Proposer().train()
    seen = []
    metrics = evaluate_proposals(model, _HandSet(), device=torch.device("cpu"), output_dir=tmp_path, prefix="p_x",
                                 batch_size=2, progress=seen.append)
    assert metrics == pytest.approx(EXPECTED, abs=1e-12)
    assert json.loads((tmp_path / "p_x_metrics.json").read_text()) == metrics
    assert seen == [2]
    assert model.modes == [False] and model.training  # ran in eval mode, then put back in training mode


def test_evaluate_proposals_refuses_a_full_detector():
    with pytest.raises(ValueError, match=r"needs an RPN-only model \(config.rpn_only = True\)"):
        evaluate_proposals(_Proposer(rpn_only=False), _HandSet(), device=torch.device("cpu"))


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with distributed.distributed_session(torch.device("cpu"), timeout_minutes=2) as device:
        # one image per rank; rank 0 gathers both, scores them and broadcasts the metrics
        metrics = evaluate_proposals(_Proposer(), _HandSet(), device=device, output_dir=out_dir if rank else None)
        torch.save(metrics, f"{out_dir}/rank{rank}.pt")
    leave_without_teardown()


def test_two_processes_give_the_single_process_recall(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert torch.load(tmp_path / f"rank{rank}.pt") == pytest.approx(EXPECTED, abs=1e-12)
    assert not (tmp_path / "proposals_metrics.json").exists()  # only rank 0 writes (its output_dir was None)


def test_rpn_only_model_keeps_the_detector_weights_but_its_roi_heads():
    from test_checkpoint import tiny_config

    torch.manual_seed(0)
    detector = FasterRCNNFPN(num_classes=3, config=tiny_config()).eval()
    proposer = rpn_only_model(detector)
    assert proposer.config.rpn_only and not proposer.training
    assert rpn_only_model(proposer) is proposer
    source, own = detector.state_dict(), proposer.state_dict()
    assert own and not any(name.startswith("roi_heads.") for name in own)
    assert all(torch.equal(tensor, source[name]) for name, tensor in own.items())
    with torch.no_grad():
        proposals = proposer([torch.rand(3, 64, 80)])[0]
    assert proposals["boxes"].shape[1] == 4 and len(proposals["boxes"]) <= proposer.config.rpn.post_nms_top_n_test
    assert torch.all(proposals["labels"] == 1)
