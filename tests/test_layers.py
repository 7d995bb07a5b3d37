"""Which way the imports run (STYLE.md, "Which way the imports run"): every `fpn` import of every module under
fpn/, at any depth (imports inside functions too), goes down the floors of `FLOORS`, never up.

The rule, read from the table:
  * a module imports from its own floor's table entries or from lower floors, never from a higher floor;
  * on its own floor, what it may import is the floor's `same_floor` rule:
      "any"     - any entry of the floor (the ground's shared contracts);
      "own"     - only its own entry (a backbone knows nothing of the pyramid, a head nothing of the input
                  transform, and so on);
      "earlier" - its own entry and the entries listed before it on the floor (datasets < loading files <
                  deployment < training: training may load a detector file, loading never trains);
  * `GROUND_ONLY` entries reach the ground floor only, whatever their floor (datasets never import a detector);
  * every module under fpn/ belongs to exactly one entry (the longest matching name: `fpn.ops` holds `fpn.ops.nms`;
    `fpn` alone is the package's front door, fpn/__init__.py);
  * a break of the rule that is better left is listed in `EXCEPTIONS` with its reason.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fpn"

# (floor, same_floor rule, entries), lowest floor first: the layer order, written once.
FLOORS: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("ground: pure ops and the contracts every floor shares", "any", (
        "fpn.ops",              # pure functions and operators (GroupNorm: a precision rule); counting host-device syncs
        "fpn.errors",           # the library's error types
        "fpn.spec",             # FeatureSpec, ImageBatch
        "fpn.config",           # the nested config dataclasses
        "fpn.device",           # picking a torch device by name
        "fpn.io.weights_file",  # reading a torch file safely (ImageNet trunks, checkpoints)
    )),
    ("modules: the detector's parts, with parameters", "own", (
        "fpn.backbones",
        "fpn.necks",
        "fpn.heads",
    )),
    ("detectors: assembling the parts (and their input side: normalise, resize, pad; input checks)", "own", (
        "fpn.detectors",
    )),
    ("data, loading and deployment, training", "earlier", (
        "fpn.data",           # datasets
        "fpn.io",             # torchvision state dicts -> ours; loading a detector from a file
        "fpn.deploy",         # the inference-only copy, export (torch.export, ONNX), drawing, predicting on files
        "fpn.engine",         # training, evaluation, checkpoints
    )),
    ("the front door: what `import fpn` offers", "own", (
        "fpn",
    )),
    ("tools: the faces (`python -m` entry points, argument parsing, exit codes)", "any", (
        "fpn.tools",
        "fpn.predict",        # `python -m fpn.predict`, a door to fpn.tools.predict
        "fpn.export",         # `python -m fpn.export`, a door to fpn.tools.export
        "fpn.data.convert",   # `python -m fpn.data.convert`, a door to fpn.tools.convert_data
        "fpn.data.report",    # `python -m fpn.data.report`, a door to fpn.tools.data_report
    )),
)

# Entries that reach the ground floor only (and themselves), whatever their floor.
GROUND_ONLY: Dict[str, str] = {
    "fpn.data": "datasets never import a detector or its parts",
}

# (importing module, imported module): why the upward import stays. Both names are full module names.
EXCEPTIONS: Dict[Tuple[str, str], str] = {
    ("fpn.detectors.faster_rcnn", "fpn.io.convert"):
        "FasterRCNNFPN.from_torchvision, the public constructor torchvision users expect, imports it when called",
    ("fpn.detectors.fcos", "fpn.io.convert"):
        "FCOSFPN.from_torchvision, the public constructor torchvision users expect, imports it when called",
    ("fpn.detectors.mask_rcnn", "fpn.io.convert"):
        "MaskRCNNFPN.from_torchvision, the public constructor torchvision users expect, imports it when called",
    ("fpn.detectors.base", "fpn.deploy.inference"):
        "Detector.optimize_for_inference, a shortcut on the model, imports it when called",
}

TOOLS_FLOOR = FLOORS[-1][2]


def _floor_of() -> Dict[str, Tuple[int, str]]:
    return {entry: (index, rule) for index, (_, rule, entries) in enumerate(FLOORS) for entry in entries}


def entry_of(module: str) -> Optional[str]:
    """The table entry that holds `module` (longest matching name), or None."""
    if module == "fpn":
        return "fpn"
    found = [e for e in _floor_of() if e != "fpn" and (module == e or module.startswith(e + "."))]
    return max(found, key=len) if found else None


def fpn_modules() -> Iterator[Tuple[str, Path]]:
    """(module name, file) of every module under fpn/."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(module: str, path: Path) -> Iterator[Tuple[str, int]]:
    """(imported fpn module, line) of every import in the file, at any depth. `from fpn.x import y` names
    `fpn.x.y` when that is a module, else `fpn.x`; relative imports are resolved against `module`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base for alias in node.names]
        else:
            continue
        for name in names:
            if name == "fpn" or name.startswith("fpn."):
                yield name, node.lineno


def why_not(importer: str, imported: str) -> Optional[str]:
    """None when `importer` may import `imported`, else the reason it may not."""
    floors = _floor_of()
    own, target = entry_of(importer), entry_of(imported)
    if target is None:
        return f"{imported} is on no floor"
    (own_floor, rule), (target_floor, _) = floors[own], floors[target]
    if own in GROUND_ONLY and target != own and target_floor > 0:
        return f"{own} reaches the ground floor only ({GROUND_ONLY[own]})"
    if target_floor < own_floor or target == own:
        return None
    if target_floor > own_floor:
        return f"up from floor '{FLOORS[own_floor][0]}' to floor '{FLOORS[target_floor][0]}'"
    entries = FLOORS[own_floor][2]
    if rule == "any" or (rule == "earlier" and entries.index(target) < entries.index(own)):
        return None
    return f"across floor '{FLOORS[own_floor][0]}' ({rule}): {own} may not import {target}"


def violations() -> List[str]:
    found = []
    for module, path in fpn_modules():
        for imported, line in imports_of(module, path):
            reason = why_not(module, imported)
            if reason is not None and (module, imported) not in EXCEPTIONS:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {imported}: {reason}")
    return found


def test_the_table_names_each_entry_once():
    entries = [entry for _, _, floor in FLOORS for entry in floor]
    assert len(entries) == len(set(entries))
    assert {rule for _, rule, _ in FLOORS} <= {"any", "own", "earlier"}
    assert set(GROUND_ONLY) <= set(entries)


def test_every_module_is_on_a_floor():
    assert [module for module, _ in fpn_modules() if entry_of(module) is None] == []


def test_imports_run_down_the_floors():
    assert violations() == []


def test_every_exception_is_still_needed():
    """A listed exception whose import is gone is removed from the list."""
    present = {(module, imported) for module, path in fpn_modules() for imported, _ in imports_of(module, path)}
    assert [pair for pair in EXCEPTIONS if pair not in present] == []


def test_only_the_tools_import_the_cli():
    importers = [module for module, path in fpn_modules() for imported, _ in imports_of(module, path)
                 if imported == "fpn.tools.cli" and entry_of(module) not in TOOLS_FLOOR]
    assert importers == []


@pytest.mark.parametrize("importer, imported, allowed", [
    ("fpn.heads.rpn", "fpn.ops.boxes", True),
    ("fpn.heads.rpn", "fpn.detectors.transform", False),       # a head knows nothing of the input transform
    ("fpn.necks.fpn", "fpn.heads.rpn", False),       # the neck nothing of the heads
    ("fpn.detectors.base", "fpn.heads.rpn", True),
    ("fpn.heads.rpn", "fpn.detectors.base", False),
    ("fpn.engine.trainer", "fpn.io.loading", True),
    ("fpn.io.loading", "fpn.engine.checkpoint", False),  # loading a file is not training
    ("fpn.data.coco", "fpn.detectors.build", False),
    ("fpn.tools.train", "fpn.tools.cli", True),
    ("fpn.engine.trainer", "fpn.tools.cli", False),
    ("fpn.deploy.export", "fpn.tools.cli", False),      # the library half of export knows no command line
    ("fpn.backbones.imagenet", "fpn.io.weights_file", True),
    ("fpn.backbones.imagenet", "fpn.io.loading", False),
    ("fpn.io.loading", "fpn.deploy.inference", False),   # loading a file needs no deployment
    ("fpn.engine.trainer", "fpn.deploy.visualize", True),
])
def test_the_rule_reads_as_the_table_says(importer, imported, allowed):
    assert (why_not(importer, imported) is None) == allowed
