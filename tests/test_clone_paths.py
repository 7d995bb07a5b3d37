"""A clone is a folder called `fpn` (what `git clone .../fpn` makes), anywhere, maybe under a path with a space: a
script in the folder above it still imports the package, not the clone folder as a namespace package."""
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _editable_install_of_this_folder() -> bool:
    # pip writes direct_url.json for an install from a folder; the project's own fpn.egg-info (importable when
    # pytest runs from here) has none, so look at every distribution called fpn.
    for distribution in importlib.metadata.distributions(name="fpn"):
        text = distribution.read_text("direct_url.json")
        if text:
            url = json.loads(text)  # {"url": "file:///.../clone%20dir/fpn", "dir_info": {"editable": true}}
            folder = Path(url2pathname(urlparse(url.get("url", "")).path))
            if url.get("dir_info", {}).get("editable") and folder.resolve() == ROOT:
                return True
    return False


def test_a_script_beside_a_clone_called_fpn_imports_the_package(tmp_path):
    if not _editable_install_of_this_folder():
        pytest.skip(f"fpn is not installed with `pip install -e` from {ROOT}")
    parent = tmp_path / "a folder"  # the folder above the clone, with a space in its path
    parent.mkdir()
    (parent / "fpn").symlink_to(ROOT, target_is_directory=True)  # a clone called fpn: no __init__.py at its top
    script = parent / "detect.py"
    script.write_text("from fpn import FasterRCNNFPN\nimport fpn\nprint(fpn.__file__)\n")
    # the script's folder comes first on the import path, as for any `python detect.py`
    run = subprocess.run([sys.executable, str(script)], cwd=parent, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (
        f"{run.stderr}\nThe editable install must put {ROOT} on the import path (setup.py's package_dir); an install "
        f"made before that uses an import hook: rerun `pip install -e .` in {ROOT}")
    assert Path(run.stdout.strip()).resolve() == ROOT / "fpn" / "__init__.py"
