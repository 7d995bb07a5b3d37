"""scripts/ablation.py with a fake train.py (runs chosen, skipped, resumed; the json/md report; bad flags) and
fpn/tools/paper_results.py; one real --quick run end to end."""
import json
from pathlib import Path

import pytest

from fpn import config
from fpn.tools.paper_results import (
    DETECTION_METRICS, ROWS, RPN_METRICS, TABLE1_RPN, TABLE2_FAST_RCNN, TABLE3_FASTER_RCNN, VARIANTS,
    detection_reference, paper_row,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablation.py"
ALL_RUNS = [(mode, variant) for mode in ("rpn", "faster") for variant in VARIANTS]


def load_ablation_script():
    """The ablation tool, fpn.tools.ablation (scripts/ablation.py is its door)."""
    from fpn.tools import ablation

    return ablation


def _flag(argv, name):
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1]  # the last value given, as argparse takes it


class FakeTrain:
    """Stands in for train.py's main: records each command line and writes checkpoint_*.pt and final_metrics.json
    like it (a run that fails has written the checkpoint of iteration 2 first)."""

    def __init__(self, exit_codes=None):
        self.calls = []
        self.exit_codes = exit_codes or {}  # (mode, variant) -> exit code, instead of finishing

    def __call__(self, argv):
        argv = list(argv)
        self.calls.append(argv)
        mode = "rpn" if _flag(argv, "--rpn-only") == "true" else "faster"
        variant, out = _flag(argv, "--variant"), Path(_flag(argv, "--output-dir"))
        code = self.exit_codes.get((mode, variant), 0)
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoint_0000002.pt").write_bytes(b"")  # only the name counts here
        if code:
            return code
        (out / f"checkpoint_{int(_flag(argv, '--iters')):07d}.pt").write_bytes(b"")
        score = 0.1 * (1 + VARIANTS.index(variant)) / 10  # 0.01 .. 0.06, a different number per variant
        if mode == "rpn":
            metrics = {"AR100": score, "AR1k": 2 * score, "AR_s": score, "AR_m": score, "AR_l": 0.5}
        else:
            metrics = {"AP": score, "AP50": 2 * score, "AP75": score, "APs": score, "APm": score, "APl": 0.25}
        (out / "final_metrics.json").write_text(json.dumps({"iter": int(_flag(argv, "--iters")), **metrics}))
        return 0

    def runs(self):
        return [("rpn" if _flag(a, "--rpn-only") == "true" else "faster", _flag(a, "--variant")) for a in self.calls]


def _run(tmp_path, *extra, train=None, iters="5"):
    train = train or FakeTrain()
    argv = ["--output-dir", str(tmp_path / "abl"), "--coco-root", str(tmp_path / "coco"), "--iters", iters, *extra]
    return load_ablation_script().main(argv, train_main=train), train


def test_every_variant_and_mode_is_trained_alike_and_reported(tmp_path, capsys):
    code, train = _run(tmp_path)
    assert code == 0 and train.runs() == ALL_RUNS
    for argv, (mode, variant) in zip(train.calls, ALL_RUNS):
        assert argv[:11] == ["--preset", "ablation-cpu", "--variant", variant, "--rpn-only",
                             "true" if mode == "rpn" else "false", "--output-dir",
                             str(tmp_path / "abl" / f"{mode}_{variant}"), "--seed", "0", "--coco-root"]
        assert _flag(argv, "--iters") == "5" and "--resume" not in argv  # a fresh run: nothing to resume
    document = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert list(document["variants"]) == list(VARIANTS)
    assert document["settings"]["iters"] == 5 and document["settings"]["preset"] == "ablation-cpu"
    c4 = document["variants"]["c4"]
    keys = {"AR100", "AR1k", "AR_s", "AR_m", "AR_l", "AP", "AP50", "AP_s", "AP_m", "AP_l"}
    assert keys <= set(c4) and c4["AR1k"] == 2.0 and c4["AP_l"] == 25.0 and c4["AR_l"] == 50.0  # percent
    assert c4["paper"]["rpn"] == {"source": "Table 1(a)", **TABLE1_RPN["c4"]}
    assert c4["paper"]["faster"]["source"] == "Table 3(a)" and c4["paper"]["faster"]["AP"] == 31.6
    assert document["variants"]["p2_only"]["paper"]["faster"]["source"].startswith("Table 2(f)")
    assert all(isinstance(entry["wall_s"][mode], float) for entry in document["variants"].values()
               for mode in ("rpn", "faster"))
    text = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| | feature | lateral? | top-down? | | AR100 | AR1k | AR_s | AR_m | AR_l | time |" in text
    assert "| | feature | lateral? | top-down? | | AP50 | AP | AP_s | AP_m | AP_l | time |" in text
    assert "| (a) baseline on conv4 (`c4`) | C4 |  |  | ours | 1.0 | 2.0 | 1.0 | 1.0 | 50.0 |" in text
    assert "| | | | | paper, Table 1(a) | 36.1 | 48.3 | 32.0 | 58.7 | 62.2 | |" in text
    assert "| | | | | paper, Table 3(c) | 56.9 | 33.9 | 17.8 | 37.7 | 45.8 | |" in text
    assert "paper, Table 2(d), Fast R-CNN on FPN proposals | 44.9 | 24.9 | 10.9 | 24.4 | 38.5" in text
    assert text.index("Table 1.") < text.index("Table 3.") and text.count("| ours |") == 12
    assert (tmp_path / "abl" / "ablation.png").is_file() or "matplotlib is not installed" in capsys.readouterr().out


def test_finished_runs_are_skipped_and_changed_settings_resume(tmp_path, capsys):
    _run(tmp_path)
    capsys.readouterr()
    code, again = _run(tmp_path)
    assert code == 0 and again.calls == [] and capsys.readouterr().out.count("with these settings, skipped") == 12
    code, longer = _run(tmp_path, "--variants", "fpn", "--modes", "rpn", iters="8")
    assert code == 0 and longer.runs() == [("rpn", "fpn")] and "--resume" in longer.calls[0]  # from iteration 5
    state = json.loads((tmp_path / "abl" / "rpn_fpn" / "ablation_run.json").read_text())
    assert state["finished"] and state["argv"] == longer.calls[0]
    code, again = _run(tmp_path, "--variants", "fpn", "--modes", "rpn", iters="8")
    assert code == 0 and again.calls == []  # --resume (now given) is no other setting


def test_an_interrupted_ablation_continues_where_it_stopped(tmp_path):
    code, train = _run(tmp_path, train=FakeTrain({("rpn", "fpn"): 130}))
    assert code == 130 and train.runs() == ALL_RUNS[:3]  # Ctrl-C stops the whole ablation
    state = json.loads((tmp_path / "abl" / "rpn_fpn" / "ablation_run.json").read_text())
    assert state["finished"] is False and "--resume" not in state["argv"]
    assert json.loads((tmp_path / "abl" / "ablation.json").read_text())["variants"]["c5"]["AR1k"] == 4.0
    (tmp_path / "abl" / "rpn_fpn" / "ablation_run.json").write_text(json.dumps({**state, "wall_s": 100.0}))
    code, rest = _run(tmp_path)
    assert code == 0 and rest.runs() == ALL_RUNS[2:]  # the interrupted run again, then on
    assert "--resume" in rest.calls[0] and not any("--resume" in argv for argv in rest.calls[1:])
    state = json.loads((tmp_path / "abl" / "rpn_fpn" / "ablation_run.json").read_text())
    assert state["finished"] and state["wall_s"] >= 100.0  # one run: the time of both attempts


def test_a_failed_run_does_not_stop_the_others(tmp_path, capsys):
    code, train = _run(tmp_path, train=FakeTrain({("faster", "c5"): 1}))
    assert code == 1 and train.runs() == ALL_RUNS
    assert "faster_c5 (exit code 1)" in capsys.readouterr().err
    entry = json.loads((tmp_path / "abl" / "ablation.json").read_text())["variants"]["c5"]
    assert entry["AP"] is None and entry["AR1k"] == 4.0 and entry["wall_s"]["faster"] is None


def test_a_bad_train_flag_stops_at_the_first_run(tmp_path):
    def rejects(argv):
        raise SystemExit(2)  # what train.py's parser does with an unknown flag

    assert load_ablation_script().main(["--output-dir", str(tmp_path), "--coco-root", "x", "--", "--bogus"],
                                       train_main=rejects) == 2
    assert json.loads((tmp_path / "rpn_c4" / "ablation_run.json").read_text())["finished"] is False


def test_variant_and_mode_selection(tmp_path):
    code, train = _run(tmp_path, "--variants", "fpn,c5,fpn", "--modes", "faster", "--seed", "3", "--",
                       "--lr", "0.01")
    assert code == 0 and train.runs() == [("faster", "fpn"), ("faster", "c5")]  # as given, once each
    assert all(_flag(a, "--seed") == "3" and a[-2:] == ["--lr", "0.01"] for a in train.calls)
    document = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert document["variants"]["fpn"]["AP"] == 3.0 and document["variants"]["fpn"]["AR1k"] is None
    assert document["variants"]["c4"]["AP"] is None and document["variants"]["c4"]["paper"]["faster"]["AP"] == 31.6
    assert document["settings"]["train_flags"] == ["--lr", "0.01"]
    assert "| (b) baseline on conv5 (`c5`) | C5 |  |  | ours | – | – | – | – | – | – |" in \
        (tmp_path / "abl" / "ablation.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--variants", "c4,c6"], "unknown variant 'c6'; known: c4, c5, fpn, no_top_down, no_lateral, p2_only"),
    (["--variants", ","], "unknown variant list (empty)"),
    (["--modes", "rpn,fast"], "unknown mode 'fast'; known: rpn, faster"),
    (["--iters", "0"], "--iters must be >= 1"),
    (["--", "--variant", "c4"], "--variant after -- is set by ablation.py itself"),
    (["--", "--output-dir=x"], "--output-dir=x after --"),
    (["--preset", "paper", "--no-coco"], "unrecognized arguments"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, argv, message):
    train = FakeTrain()
    with pytest.raises(SystemExit) as stop:
        load_ablation_script().main(["--output-dir", str(tmp_path), *argv], train_main=train)
    assert stop.value.code == 2 and message in capsys.readouterr().err and train.calls == []


def test_a_coco_preset_needs_data(capsys):
    with pytest.raises(SystemExit) as stop:
        load_ablation_script().main(["--preset", "paper"], train_main=FakeTrain())
    assert stop.value.code == 2 and "give --coco-root" in capsys.readouterr().err


def test_print_commands_gives_one_job_per_run(tmp_path, capsys):
    script = load_ablation_script()
    argv = ["--preset", "paper", "--coco-root", "/data/coco", "--output-dir", str(tmp_path), "--print-commands",
            "--", "--backbone-weights", "r50.pth"]
    assert script.main(argv, train_main=FakeTrain()) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 12 and all(line.startswith("torchrun --nproc_per_node=8 scripts/train.py --preset paper")
                                    for line in lines)
    assert "--variant no_lateral --rpn-only false" in lines[10] and lines[10].endswith("--backbone-weights r50.pth")
    assert all(" --resume " in line for line in lines)  # a job rerun on the cluster continues
    assert not (tmp_path / "ablation.json").exists()  # nothing trained, nothing written
    assert script.main(["--output-dir", str(tmp_path), "--print-commands", "--nproc-per-node", "1", "--variants",
                        "fpn"], train_main=FakeTrain()) == 0
    generate, *runs = capsys.readouterr().out.splitlines()
    assert generate.startswith(f"python -m fpn.data.synthetic {tmp_path / 'synthetic'} --num-images 500")
    assert "--min-object-size 6 --max-object-fraction 0.9" in generate
    assert [line.split()[:2] for line in runs] == [["python", "scripts/train.py"]] * 2
    assert not (tmp_path / "synthetic").exists()


def test_collect_reports_runs_made_elsewhere(tmp_path):
    run = tmp_path / "faster_fpn"
    run.mkdir(parents=True)
    (run / "final_metrics.json").write_text(json.dumps({"iter": 80000, "AP": 0.339, "AP50": 0.569, "APs": 0.178,
                                                        "APm": 0.377, "APl": 0.458}))
    train = FakeTrain()
    argv = ["--preset", "paper", "--coco-root", "/data/coco", "--output-dir", str(tmp_path), "--collect"]
    assert load_ablation_script().main(argv, train_main=train) == 0 and train.calls == []
    entry = json.loads((tmp_path / "ablation.json").read_text())["variants"]["fpn"]
    assert (entry["AP"], entry["AP50"], entry["AP_l"], entry["AR1k"]) == (33.9, 56.9, 45.8, None)


def test_paper_numbers_are_complete_and_labelled():
    assert [row.row for row in ROWS] == ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)"]
    assert set(TABLE1_RPN) == set(TABLE2_FAST_RCNN) == set(VARIANTS) and set(TABLE3_FASTER_RCNN) == {"c4", "c5", "fpn"}
    assert all(tuple(numbers) == RPN_METRICS for numbers in TABLE1_RPN.values())
    assert all(tuple(numbers) == DETECTION_METRICS for numbers in TABLE2_FAST_RCNN.values())
    assert TABLE1_RPN["fpn"]["AR1k"] - TABLE1_RPN["c4"]["AR1k"] == pytest.approx(8.0)  # "increases AR by 8.0"
    assert TABLE3_FASTER_RCNN["fpn"]["AP"] - TABLE3_FASTER_RCNN["c4"]["AP"] == pytest.approx(2.3)  # Sec. 5.2.2
    assert TABLE2_FAST_RCNN["fpn"] == TABLE3_FASTER_RCNN["fpn"]
    source, numbers = detection_reference("no_lateral")
    assert source == "Table 2(e), Fast R-CNN on FPN proposals" and numbers == TABLE2_FAST_RCNN["no_lateral"]
    assert paper_row("p2_only").feature == "P2"
    with pytest.raises(ValueError, match="unknown variant 'c6'"):
        paper_row("c6")
    assert tuple(config.VARIANTS) == VARIANTS  # the config's names are the rows' names


def test_quick_ablation_end_to_end(tmp_path, capsys):  # the real train.py, 12 tiny runs (~15 s on 2 cores)
    out = tmp_path / "quick"
    assert load_ablation_script().main(["--quick", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr()
    assert "--resume:" not in printed.out + printed.err  # fresh runs: train.py has nothing to say of resuming
    document = json.loads((out / "ablation.json").read_text())
    for variant, entry in document["variants"].items():
        assert all(isinstance(entry[key], float) for key in ("AR100", "AR1k", "AP", "AP50")), variant
    assert (out / "ablation.md").is_file() and document["settings"]["quick"] is True
