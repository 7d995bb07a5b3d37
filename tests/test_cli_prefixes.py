"""Every command-line tool starts each of its error lines with its own name, `<tool>: error: ...`, whether argparse
found the error (a bad flag) or the tool did (a missing file, an input that failed): train.py, evaluate.py,
ablation.py, predict (python -m fpn.predict and scripts/predict.py) and export (python -m fpn.export)."""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from fpn.tools.cli import run_cli

REPO = Path(__file__).resolve().parents[1]


def _script(name):
    return importlib.import_module(f"fpn.tools.{name}")


def _error_lines(capsys, call):
    try:
        code = call()
    except SystemExit as stop:  # argparse's errors exit
        code = stop.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and lines and "Traceback" not in err, (code, err)
    return lines


def _export_main(argv):
    from fpn import export

    return run_cli(export.main, argv, prog="export")


def _tools():
    from fpn import predict

    return {
        "train.py": _script("train").main,
        "evaluate.py": _script("evaluate").main,
        "ablation.py": _script("ablation").main,
        "predict": predict.main,
        "export": _export_main,
    }


@pytest.mark.parametrize("tool", ["train.py", "evaluate.py", "ablation.py", "predict", "export"])
def test_a_bad_flag_and_a_missing_file_give_the_same_prefix(tool, tmp_path, capsys):
    main = _tools()[tool]
    absent = str(tmp_path / "absent.pt")
    bad_flag = {
        "train.py": ["--preset", "cpu-demo", "--no-such-flag"],
        "evaluate.py": [absent, "--no-such-flag"],
        "ablation.py": ["--no-such-flag"],
        "predict": [str(tmp_path), "--weights", absent, "--no-such-flag"],
        "export": ["--weights", absent, "--output", str(tmp_path / "m.pt2"), "--no-such-flag"],
    }[tool]
    missing_file = {
        "train.py": ["--preset", "cpu-demo", "--init-from", absent, "--output-dir", str(tmp_path / "run")],
        "evaluate.py": [absent, "--coco-root", str(tmp_path)],
        "ablation.py": ["--quick", "--output-dir", str(tmp_path / "ab"), "--", "--init-from", absent],
        "predict": [str(tmp_path / "nothing.png"), "--weights", absent],
        "export": ["--weights", absent, "--output", str(tmp_path / "m.pt2")],
    }[tool]
    for argv in (bad_flag, missing_file):
        lines = _error_lines(capsys, lambda: main(argv))
        if tool == "ablation.py" and argv is missing_file:  # a run's own line, then the runner's
            assert lines[0].startswith("train.py: error: --init-from file") and len(lines) == 2, lines
            lines = lines[1:]
        assert all(line.startswith(f"{tool}: error: ") for line in lines), (argv, lines)


def test_predict_names_each_failed_input_with_its_prefix(tmp_path, capsys):
    from fpn import predict

    lines = _error_lines(capsys, lambda: predict.main([str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                                                       "--weights", str(tmp_path / "absent.pt")]))
    assert len(lines) == 3 and all(line.startswith("predict: error: ") for line in lines), lines


def test_scripts_predict_is_the_same_tool(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"), str(tmp_path / "a.png"),
                          "--weights", str(tmp_path / "absent.pt")], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.startswith("predict: error: "), run.stderr
