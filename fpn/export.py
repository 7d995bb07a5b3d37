"""`python -m fpn.export --weights CKPT --output model.onnx|model.pt2` (the tool: fpn/tools/export.py), and the
Python names the README documents: `fpn.export.export_onnx(model, path)`, `fpn.export.export_program(model)`
(the library: fpn/deploy/export.py)."""
import sys

from fpn.deploy.export import export_onnx, export_program  # noqa: F401
from fpn.tools.cli import run_cli
from fpn.tools.export import main

if __name__ == "__main__":
    sys.exit(run_cli(main, prog="export"))
