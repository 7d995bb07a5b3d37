"""scripts/bench_ops.py --quick runs end to end and prints its Markdown table (timings are not checked)."""
import json
import subprocess
import sys
from pathlib import Path

from test_benchmark import check_missing_torchvision_is_reported

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_ops.py"


def test_quick_benchmark_prints_table(tmp_path):
    out_json = tmp_path / "ops.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out_json)],
                            capture_output=True, text=True, timeout=300, check=True)
    lines = result.stdout.splitlines()
    assert ("| op | size | device | ours ms | torchvision ms | ours / tv | ours peak MiB | torchvision peak MiB |"
            in lines)
    rows = [line for line in lines if line.startswith("| nms") or line.startswith("| MultiScaleRoIAlign")]
    assert [row.split("|")[1].strip() for row in rows] == [
        "nms: proposals", "nms: identical boxes", "MultiScaleRoIAlign forward fp32", "MultiScaleRoIAlign backward fp32"]
    saved = json.loads(out_json.read_text())
    assert len(saved["rows"]) == len(rows) and saved["threads"] == 1
    assert all(row["ours_ms"] > 0 and row["torchvision_ms"] > 0 for row in saved["rows"])
    assert all(row["ours_peak_mib"] > 0 for row in saved["rows"])  # every call allocates its output at least




def test_missing_torchvision_is_one_line_saying_how_to_install_it():
    check_missing_torchvision_is_reported(SCRIPT)
