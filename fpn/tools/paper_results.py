"""The paper's ablation numbers, as data: what scripts/ablation.py prints beside our own.

Source: T.-Y. Lin, P. Dollar, R. Girshick, K. He, B. Hariharan, S. Belongie, "Feature Pyramid Networks for
Object Detection", CVPR 2017 (arXiv:1612.03144v2), Tables 1-3. Every number there is for ResNet-50 trained on
COCO trainval35k and evaluated on minival, in percent; each was read off the table and checked a second time.

* Table 1: RPN proposals, AR at 100 and 1000 proposals per image and AR at 1000 for small/medium/large objects
  (the paper's AR^1k_s, AR^1k_m, AR^1k_l; here AR_s, AR_m, AR_l), rows (a)..(f).
* Table 2: Fast R-CNN on one fixed set of proposals (those of Table 1(c)), rows (a)..(f).
* Table 3: Faster R-CNN, RPN and detector on the same features, rows (a)..(c) only (and (*), a weaker baseline
  reported by He et al., left out here).

Detection reference for a variant (`detection_reference`): Table 3 where it has the row, since our "faster"
runs train RPN and detector together on one backbone as Table 3 does; Table 2 for (d)..(f), which Table 3 lacks,
labelled as such because its proposals come from the full FPN, not from the variant. Row (a) of Tables 2-3 has a
conv5 head on 14x14 RoI pooling (He et al.'s ResNet detector); rows (b)..(f) the 2-fc head our model uses.
Table 2(c) and 3(c) are the same numbers in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

RPN_METRICS = ("AR100", "AR1k", "AR_s", "AR_m", "AR_l")  # Table 1's columns (AR_s/m/l at 1000 proposals)
DETECTION_METRICS = ("AP50", "AP", "AP_s", "AP_m", "AP_l")  # Tables 2-3's columns (AP@0.5, AP, APs, APm, APl)


@dataclass(frozen=True)
class PaperRow:
    """One row of Tables 1-3: the architecture a `FasterRCNNConfig.variant` reproduces."""

    variant: str  # FasterRCNNConfig.variant
    row: str  # the row's label in Tables 1-3
    name: str  # the row's title in the paper
    feature: str  # the feature maps the heads work on
    lateral: bool  # lateral connections present
    top_down: bool  # top-down pathway present


ROWS: Tuple[PaperRow, ...] = (
    PaperRow("c4", "(a)", "baseline on conv4", "C4", False, False),
    PaperRow("c5", "(b)", "baseline on conv5", "C5", False, False),
    PaperRow("fpn", "(c)", "FPN", "{Pk}", True, True),
    PaperRow("no_top_down", "(d)", "bottom-up pyramid", "{Pk}", True, False),
    PaperRow("no_lateral", "(e)", "top-down pyramid, w/o lateral", "{Pk}", False, True),
    PaperRow("p2_only", "(f)", "only finest level", "P2", True, True),
)
VARIANTS: Tuple[str, ...] = tuple(row.variant for row in ROWS)  # in the paper's order (a)..(f)


def _columns(names: Tuple[str, ...], rows: Dict[str, Tuple[float, ...]]) -> Dict[str, Dict[str, float]]:
    return {variant: dict(zip(names, values)) for variant, values in rows.items()}


# Table 1: bounding box proposals with RPN.               AR100  AR1k  AR_s  AR_m  AR_l
TABLE1_RPN = _columns(RPN_METRICS, {
    "c4": (36.1, 48.3, 32.0, 58.7, 62.2),  # (a) baseline on conv4
    "c5": (36.3, 44.9, 25.3, 55.5, 64.2),  # (b) baseline on conv5
    "fpn": (44.0, 56.3, 44.9, 63.4, 66.2),  # (c) FPN
    "no_top_down": (37.4, 49.5, 30.5, 59.9, 68.0),  # (d) bottom-up pyramid
    "no_lateral": (34.5, 46.1, 26.5, 57.4, 64.7),  # (e) top-down pyramid, w/o lateral
    "p2_only": (38.4, 51.3, 35.1, 59.7, 67.6),  # (f) only finest level
})

# Table 2: Fast R-CNN on the fixed proposals of Table 1(c).    AP50  AP    AP_s  AP_m  AP_l
TABLE2_FAST_RCNN = _columns(DETECTION_METRICS, {
    "c4": (54.7, 31.9, 15.7, 36.5, 45.5),  # (a) baseline on conv4 (conv5 head)
    "c5": (52.9, 28.8, 11.9, 32.4, 43.4),  # (b) baseline on conv5
    "fpn": (56.9, 33.9, 17.8, 37.7, 45.8),  # (c) FPN
    "no_top_down": (44.9, 24.9, 10.9, 24.4, 38.5),  # (d) bottom-up pyramid
    "no_lateral": (54.0, 31.3, 13.3, 35.2, 45.3),  # (e) top-down pyramid, w/o lateral
    "p2_only": (56.3, 33.4, 17.3, 37.3, 45.6),  # (f) only finest level
})

# Table 3: Faster R-CNN, RPN and detector on consistent features.  AP50  AP    AP_s  AP_m  AP_l
TABLE3_FASTER_RCNN = _columns(DETECTION_METRICS, {
    "c4": (53.1, 31.6, 13.2, 35.6, 47.1),  # (a) baseline on conv4 (conv5 head)
    "c5": (51.7, 28.0, 9.6, 31.9, 43.1),  # (b) baseline on conv5
    "fpn": (56.9, 33.9, 17.8, 37.7, 45.8),  # (c) FPN
})


def paper_row(variant: str) -> PaperRow:
    """The row of Tables 1-3 for `variant`; an unknown name raises ValueError listing the known ones."""
    for row in ROWS:
        if row.variant == variant:
            return row
    raise ValueError(f"unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}")


def detection_reference(variant: str) -> Tuple[str, Dict[str, float]]:
    """The paper's detection numbers to show beside our Faster R-CNN run of `variant`.

    Returns:
        (source, numbers): source e.g. "Table 3(a)" or "Table 2(d), Fast R-CNN on FPN proposals"; numbers a dict
        keyed DETECTION_METRICS, in percent.
    """
    row = paper_row(variant)
    if variant in TABLE3_FASTER_RCNN:
        return f"Table 3{row.row}", dict(TABLE3_FASTER_RCNN[variant])
    return f"Table 2{row.row}, Fast R-CNN on FPN proposals", dict(TABLE2_FAST_RCNN[variant])
