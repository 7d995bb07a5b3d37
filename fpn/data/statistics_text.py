"""The dataset report as text: the compact table `DatasetReport.text()` prints before training (about 25 lines
however many classes: long class lists are cut to what fits, the worst-covered boxes to `WORST_SHOWN`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Sequence

import numpy as np

if TYPE_CHECKING:
    from fpn.data.statistics import DatasetReport

WORST_SHOWN = 10  # poorly covered boxes printed


def report_lines(report: DatasetReport) -> List[str]:
    """The lines of `report.text()`."""
    n, k = report.num_images, len(report.box_sizes)
    per_image = report.objects_per_image
    size = report.input
    lines = [
        f"{n} images ({int((per_image == 0).sum())} without objects), {k} objects in {len(report.class_names)} "
        f"classes; left out: {report.num_crowd} crowd regions, {report.num_dropped} empty boxes",
        f"at the test input size (shorter side {size.min_size} px, longer at most {size.max_size}; training draws "
        f"the shorter side from {_listed(size.train_min_sizes)})",
        f"objects per image: median {_num(np.median(per_image) if n else 0)}, mean {_num(per_image.mean() if n else 0)}"
        f", max {int(per_image.max()) if n else 0}",
    ]
    if k:
        p = np.percentile(report.box_sizes, [0, 10, 50, 90, 100])
        anchors = f"; anchor sizes {_listed(report.anchor_sizes)}" if report.anchor_sizes else ""
        lines.append(f"box size sqrt(wh), px: min {p[0]:.1f}, 10% {p[1]:.1f}, median {p[2]:.1f}, 90% {p[3]:.1f}, "
                     f"max {p[4]:.1f}{anchors}")
    order = np.argsort(-np.asarray(report.instances_per_class), kind="stable")
    named = [f"{report.class_names[i]} {report.instances_per_class[i]}" for i in order]
    first = _fit("instances per class: ", named)
    lines.append(first)
    if first.endswith("more"):
        lines.append(_fit("  fewest: ", named[::-1]))
    rule = "size of interest max(w, h) / 2" if report.arch == "fcos" else "Eq. (1), k0 = 4, 224 px"
    heads = {"fcos": "FCOS level", "mask_rcnn": "RoI level (box and mask heads)"}.get(report.arch, "RoI level")
    counts = report.level_counts
    lines.append(f"{heads}, {rule}: {_shares(counts.sum(axis=0), report.level_names)}")
    for i in order[:4]:
        lines.append(f"  {report.class_names[i]}: {_shares(counts[i], report.level_names)}")
    if report.best_iou is None:
        lines.append("anchors: none (FCOS is anchor-free; its locations take boxes by the level ranges above)")
        return lines
    fg, bg = report.fg_iou_thresh, report.bg_iou_thresh
    lines.append(f"best anchor IoU: median {_num(np.median(report.best_iou) if k else 0)}; below {fg}: "
                 f"{_part(report.count_below(fg), k)}, below {bg}: {_part(report.count_below(bg), k)}")
    if report.poorly_covered:
        lines.append(f"  below {fg}: a box's only positive anchors are its best ones (the matcher's low-quality rule)")
        lines.append(f"  below {bg}: every other anchor around it is trained as background; the worst boxes:")
    for box in report.poorly_covered[:WORST_SHOWN]:
        x, y, w, h = box["bbox"]
        lines.append(f"  {box['best_iou']:.3f}  {box['file_name']} annotation {box['annotation_id']} "
                     f"{box['category']} [x y w h {x:.1f} {y:.1f} {w:.1f} {h:.1f}]")
    return lines


def _fit(prefix: str, items: Sequence[str], width: int = 110) -> str:
    """prefix + as many of `items` as fit in `width` characters, then how many more there are."""
    shown = []
    for item in items:
        if len(prefix) + len(", ".join([*shown, item])) + 12 > width and shown:
            break
        shown.append(item)
    more = len(items) - len(shown)
    return prefix + ", ".join(shown) + (f", ... {more} more" if more else "")


def _listed(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _num(value: float) -> str:
    return f"{float(value):.2f}".rstrip("0").rstrip(".")


def _part(count: int, total: int) -> str:
    return f"{count} ({100 * count / max(total, 1):.1f}%)"


def _shares(counts: np.ndarray, names: Sequence[str]) -> str:
    total = max(int(counts.sum()), 1)
    return "  ".join(f"{name} {int(c)} ({100 * c / total:.0f}%)" for name, c in zip(names, counts))
