"""`python -m fpn.export`: write a detector as a `torch.export` program or an ONNX model that onnxruntime runs.

    python -m fpn.export --weights runs/demo/checkpoint_0000800.pt --output model.onnx
    python -m fpn.export --weights fasterrcnn_resnet50_fpn_coco-258fb6c6.pth --output model.pt2

`--weights` is one of our checkpoints or a torchvision detector state dict (as predict takes). The output's
extension picks the format: `.onnx` (opset 18; needs `pip install -e ".[export]"`) or `.pt2` (an
`ExportedProgram` written by `torch.export.save`, read back with `torch.export.load(path).module()`). The
written model is run once on a test image and compared with the eager model; the summary line says by how much
they differ. Bad flags, unreadable weights and a missing ONNX install end the run with one line, exit code 2.
The interface of the written models, and what in them is static: fpn/deploy/export.py.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from fpn.deploy.export import compare_with_eager, export_onnx, export_program, require_onnx, save_program
from fpn.errors import InputError
from fpn.tools.cli import ArgumentParser, run_cli


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m fpn.export", tool="export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="our checkpoint or a torchvision detector state dict")
    parser.add_argument("--output", required=True, type=Path, help="model.onnx (ONNX) or model.pt2 (torch.export)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    if args.output.suffix not in (".onnx", ".pt2"):
        raise InputError(f"--output {args.output}: the name must end in .onnx (ONNX) or .pt2 (torch.export)")
    if not args.output.parent.is_dir():
        raise InputError(f"--output {args.output}: folder {args.output.parent} does not exist")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    from fpn.io.loading import load_detector

    args = parse_args(argv)
    if args.output.suffix == ".onnx":
        require_onnx()  # before the (slow) load and trace
    model, _ = load_detector(args.weights, "cpu")
    print(f"export: tracing the detector from {args.weights} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    if args.output.suffix == ".onnx":
        export_onnx(model, args.output)
        kind = "ONNX model"
    else:
        save_program(export_program(model), args.output)
        kind = "torch.export program"
    seconds = time.perf_counter() - start
    image = torch.rand(3, 360, 500, generator=torch.Generator().manual_seed(1))
    check = compare_with_eager(model, args.output, image)
    size_mb = args.output.stat().st_size / 2**20
    print(f"export: wrote {args.output} ({kind}, {size_mb:.1f} MB) in {seconds:.0f} s; on a 360x500 test image: "
          f"{check}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="export"))
