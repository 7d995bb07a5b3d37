"""Export a detector for deployment: a `torch.export` program (`export_program`, written by `save_program` and
read back with `torch.export.load(path).module()`), or an ONNX model that onnxruntime runs (`export_onnx`, opset 18;
needs `pip install -e ".[export]"`). `compare_with_eager` runs a written model once and says how far it is from the
eager detector. The command line is `python -m fpn.export` (fpn/tools/export.py).

Interface of both: one float32 image (3, H, W), RGB in [0, 1], any H and W; resizing, normalisation and padding
happen inside, as in the eager model. Outputs `boxes` (D, 4) float32 xyxy in that image's pixels, `scores` (D,)
float32 and `labels` (D,) int64, by decreasing score: the eval-mode contract of the detectors (`FasterRCNNFPN`, `FCOSFPN`) for one image.

What is static and what dynamic:
  * dynamic: the image's height and width (16..8192 px), the number of proposals and of detections D (an
    unknown count decided by NMS; 0 is fine), the number of RoIs pooled from each pyramid level;
  * static: the batch (one image: the detections of several images have different counts, and splitting them by
    image needs a read of those counts that an exported graph cannot make), the weights and every config value
    (score threshold, NMS thresholds, top-k counts, min_size/max_size), float32;
  * a limit of the `.pt2` program: every pyramid level of the resized, padded image must be at least 2 x 2 (its
    shorter side above 64 px after resizing, i.e. aspect ratios up to about 4:1 with min_size = max_size = 256,
    13:1 with 800 / 1333); `torch.export` treats a size of 1 as a special case, and the program's guard rejects
    such an image. The ONNX model has no guards.
"""
from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Tuple

import torch
from torch import Tensor, nn

from fpn.errors import InputError
from fpn.detectors.build import arch_of
from fpn.detectors.transform import postprocess, preprocess

EXAMPLE_SIZE = (480, 640)  # (H, W) of the example image traced: large enough for a 2 x 2 P6 after resizing
MIN_SIDE, MAX_SIDE = 16, 8192  # the range of H and W the exported graphs accept
INSTALL_HINT = 'pip install -e ".[export]"'
# Messages of torch's exporters that say nothing about the model written here (see where each is silenced).
ONNX_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"
NO_TORCHVISION = re.compile(r"torchvision is not installed\. Skipping torchvision::")
NO_COMPLETE_TENSOR = "No complete tensor found in the group"


def output_names(model: nn.Module) -> Tuple[str, ...]:
    """The exported graph's outputs: boxes, scores, labels, and masks (D, 1, H, W) for Mask R-CNN."""
    return ("boxes", "scores", "labels") + (("masks",) if arch_of(model) == "mask_rcnn" else ())


class DetectorGraph(nn.Module):
    """The eval-mode forward of a detector (`FasterRCNNFPN`, `FCOSFPN`, `MaskRCNNFPN`) for one image, written to be
    traced: (3, H, W) float in [0, 1] -> (boxes (D, 4), scores (D,), labels (D,) int64[, masks (D, 1, H, W)]),
    the same values as `model([image])[0]` (`output_names`).

    It calls preprocess, the model's `forward_batch` and postprocess, without the input checks of
    `Detector.forward`, whose value-range warning reads the image on the host. `written_out_resize`: resize with
    `fpn.ops.resize.bilinear_resize` (the ONNX export: PyTorch's bilinear arithmetic, not ONNX Resize's).
    """

    def __init__(self, model: nn.Module, *, written_out_resize: bool = False):
        super().__init__()
        self.model = model
        self.written_out_resize = written_out_resize
        self.outputs = output_names(model)

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        model = self.model
        original_size = (image.shape[-2], image.shape[-1])  # symbolic under torch.export
        batch, _ = preprocess([image], None, model.config.input, False, written_out_resize=self.written_out_resize)
        detections = model.forward_batch(batch)  # the detector's own eval path, ImageBatch frame
        det = postprocess(detections, batch.image_sizes, [original_size])[0]
        return tuple(det[name] for name in self.outputs)


def _traceable(
    model: nn.Module, *, written_out_resize: bool = False
) -> Tuple[DetectorGraph, Tuple[Tensor], Tuple[dict]]:
    """The graph module, an example input and its dynamic shapes (H and W of the image)."""
    if model.training:
        raise ValueError("export the model in eval mode (model.eval()): training returns losses, not detections")
    device = next(model.parameters()).device
    example = torch.rand(3, *EXAMPLE_SIZE, generator=torch.Generator().manual_seed(0)).to(device)
    height = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    graph = DetectorGraph(model, written_out_resize=written_out_resize).eval()
    return graph, (example,), ({1: height, 2: width},)


def export_program(model: nn.Module) -> torch.export.ExportedProgram:
    """`torch.export` of the eval-mode detector for one image of any height and width.

    Args:
        model: a `FasterRCNNFPN` or `FCOSFPN` in eval mode.
    Returns:
        the ExportedProgram; `program.module()(image)` gives (boxes, scores, labels[, masks]) as `DetectorGraph`. The
        fpn::nms, fpn::batched_nms and fpn::roi_align operators are single nodes of its graph.
    """
    graph, example, dynamic_shapes = _traceable(model)
    with torch.no_grad():
        return torch.export.export(graph, example, dynamic_shapes=dynamic_shapes)


def save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    """`torch.export.save(program, path)`, without its "No complete tensor found in the group" warning: torch says
    so of each weight that is not contiguous (channels-last convolutions) and writes it whole all the same. The
    program reads back with `torch.export.load(path).module()`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NO_COMPLETE_TENSOR, category=UserWarning)
        torch.export.save(program, str(path))


def export_onnx(model: nn.Module, path: Path) -> None:
    """Write the eval-mode detector as an ONNX model (opset 18, standard ops only) to `path`.

    Input `image` (3, H, W) float32, dynamic H and W; outputs `boxes`, `scores`, `labels` (and `masks` (D, 1, H, W)
    for Mask R-CNN, pasted into the image as the eager model's). NMS and RoIAlign are
    ONNX's NonMaxSuppression and RoiAlign (see fpn/deploy/onnx_ops.py for how their semantics match ours).
    """
    require_onnx()
    from fpn.deploy.onnx_ops import OPSET, translation_table

    # written_out_resize: PyTorch's bilinear arithmetic, not ONNX Resize's
    graph, example, dynamic_shapes = _traceable(model, written_out_resize=True)
    with torch.no_grad(), _without_torchvision_notice():
        program = torch.onnx.export(
            graph, example, dynamo=True, dynamic_shapes=dynamic_shapes, opset_version=OPSET,
            custom_translation_table=translation_table(), input_names=["image"],
            output_names=list(graph.outputs), optimize=True, verbose=False,
        )
    program.save(str(path))


@contextmanager
def _without_torchvision_notice() -> Iterator[None]:
    """Drop, while exporting, the ONNX exporter's "torchvision is not installed. Skipping torchvision::nms" (one
    line per torchvision operator it knows, logged when torchvision is absent, as it is with the `export` extra
    alone): our graphs hold fpn's operators, translated by fpn/deploy/onnx_ops.py. Its other messages pass."""

    def keep(record: logging.LogRecord) -> bool:
        return not NO_TORCHVISION.match(record.getMessage())

    logger = logging.getLogger(ONNX_REGISTRY_LOGGER)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def require_onnx() -> None:
    """Raise InputError naming the install command when onnx, onnxscript or onnxruntime is missing."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise InputError(f"ONNX export needs {', '.join(missing)}, not installed: run {INSTALL_HINT}")


def run_onnx(path: Path, image: Tensor) -> Tuple[Tensor, ...]:
    """Run the ONNX model at `path` with onnxruntime (CPU) on one (3, H, W) image: (boxes, scores, labels), and
    masks for a Mask R-CNN model."""
    require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(torch.from_numpy(out) for out in session.run(None, {"image": image.detach().cpu().float().numpy()}))


def compare_with_eager(model: nn.Module, path: Path, image: Tensor) -> str:
    """Run the written model and the eager one on `image`; a one-line account of how they differ."""
    with torch.no_grad():
        expected = model([image])[0]
    if path.suffix == ".onnx":
        found = run_onnx(path, image)
    else:
        with torch.no_grad():
            found = torch.export.load(str(path)).module()(image)
    found = dict(zip(output_names(model), (value.cpu() for value in found)))
    return f"{found['boxes'].shape[0]} detections (eager {expected['boxes'].shape[0]}), " + _difference(
        found, expected)


def _difference(found: Dict[str, Tensor], expected: Dict[str, Tensor]) -> str:
    """How far `found` is from the eager detections. Each eager detection is paired with the found detection of
    its label whose box is nearest (largest coordinate difference): detections of nearly equal scores may come
    in another order, where float rounding differs (e.g. onnxruntime's convolutions). Masks: the mean absolute
    difference of each pair's pasted masks."""
    boxes, scores, labels = found["boxes"], found["scores"], found["labels"]
    if boxes.shape[0] == 0 or expected["boxes"].shape[0] == 0:
        return "both empty" if boxes.shape[0] == expected["boxes"].shape[0] else "one of them empty"
    distance = (expected["boxes"][:, None, :] - boxes[None, :, :]).abs().amax(dim=2)  # (D_eager, D)
    distance = torch.where(expected["labels"][:, None] == labels[None, :], distance, float("inf"))
    nearest, index = distance.min(dim=1)
    score_diff = (expected["scores"] - scores[index]).abs().max().item()
    in_order = boxes.shape == expected["boxes"].shape and torch.equal(index, torch.arange(boxes.shape[0]))
    masks = ""
    if "masks" in found:
        masks = f", mean mask difference {(expected['masks'] - found['masks'][index]).abs().mean().item():.2g}"
    return (f"max box difference {nearest.max().item():.2g} px to the nearest detection of the same label "
            f"({'same order' if in_order else 'order differs'}), max score difference {score_diff:.2g}{masks}")
