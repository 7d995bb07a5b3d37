"""TensorBoard event files of a training run (`--tensorboard`): the metrics.jsonl numbers and the run's pictures.

    tensorboard --logdir runs/demo/tensorboard

Every line written to metrics.jsonl is also written here as scalars at step `iter` (`MetricsLog` hands each
record to `TrainingBoard.add_record`): a training line's values under `train/<key>` (losses, time, data_time)
and its learning rate as `lr`; an evaluation line's under `val/<key>` (AP..., AR..., val_loss, val_<term>).
Values that are not numbers (a nested per-class table) are left out, as the plots leave them. Pictures: the
detections picture at each evaluation (`detections`, step = iteration) and the final plots (`plots/losses`, ...).
Only rank 0 writes. A resumed run purges the events after its checkpoint's iteration (SummaryWriter's
`purge_step`), as metrics.jsonl drops those lines. Needs the `tensorboard` package, the optional
`pip install -e ".[tensorboard]"` extra; `require_tensorboard` says so in one line before training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from fpn.errors import InputError

BOARD_DIR = "tensorboard"  # under the run's output directory
INSTALL_HINT = '--tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"'


def require_tensorboard() -> None:
    """InputError (the one-line install hint) when the tensorboard package is not installed."""
    try:
        import tensorboard  # noqa: F401 (torch.utils.tensorboard writes with it)
    except ImportError:
        raise InputError(INSTALL_HINT) from None


def scalar_tags(record: Mapping[str, Any]) -> dict:
    """{tag: value} of one metrics.jsonl record: `lr`, `train/<key>` of a training line (it has `lr`), `val/<key>`
    of an evaluation line; `iter` and values that are not numbers (bools, dicts, strings) are left out."""
    section = "train" if "lr" in record else "val"
    tags = {}
    for key, value in record.items():
        if key == "iter" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        tags["lr" if key == "lr" else f"{section}/{key}"] = float(value)
    return tags


class TrainingBoard:
    """A SummaryWriter on OUTPUT_DIR/tensorboard (rank 0 only: build it there, pass None elsewhere)."""

    def __init__(self, output_dir: Path, start_iteration: int = 0):
        """Open the event file; `start_iteration` > 0 (a resumed run) hides the events logged after it."""
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(output_dir) / BOARD_DIR
        self.writer = SummaryWriter(str(self.log_dir), purge_step=start_iteration + 1 if start_iteration else None)

    def add_record(self, record: Mapping[str, Any]) -> None:
        """The numbers of one metrics.jsonl record as scalars at step `record["iter"]`."""
        step = int(record["iter"])
        for tag, value in scalar_tags(record).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def add_picture(self, tag: str, path: Path, step: int) -> None:
        """A PNG file (the detections picture, a plot) as image `tag` at `step`."""
        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"))  # (H, W, 3) uint8
        self.writer.add_image(tag, pixels, step, dataformats="HWC")
        self.writer.flush()

    def add_plots(self, paths: Sequence[Path], step: int) -> None:
        """The final plots (losses.png, ...) as images `plots/<name>`."""
        for path in paths:
            self.add_picture(f"plots/{Path(path).stem}", path, step)

    def close(self) -> None:
        self.writer.close()


def open_board(enabled: bool, output_dir: Path, start_iteration: int, main_process: bool) -> Optional[TrainingBoard]:
    """A TrainingBoard when `enabled` on the main process, else None."""
    return TrainingBoard(output_dir, start_iteration) if enabled and main_process else None
