import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpn.engine import plots as plot_metrics_module

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot_metrics.py"


def _train_line(it, loss):
    return {"iter": it, "lr": 0.02 * min(1.0, (it + 1) / 10), "loss_objectness": loss * 0.1,
            "loss_rpn_box_reg": loss * 0.05, "loss_classifier": loss * 0.5, "loss_box_reg": loss * 0.35,
            "loss": loss}


def _eval_line(it, ap):
    return {"iter": it, "AP": ap, "AP50": ap * 1.6, "AP75": ap * 1.1, "APs": ap * 0.5, "APm": ap, "APl": ap * 1.3}


def _write(path: Path, rows, extra_lines=()):
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_lines_in_any_order_are_sorted_by_iteration(tmp_path):
    rows = [_train_line(20, 1.0), _eval_line(20, 0.1), _train_line(0, 2.0), _eval_line(10, 0.05),
            _train_line(10, 1.5)]
    metrics = _write(tmp_path / "metrics.jsonl", rows, extra_lines=["", json.dumps({"final_AP": 0.1})])
    parsed = plot_metrics_module.read_metrics(metrics)
    assert len(parsed) == 5  # the blank line and the line without "iter" are skipped
    losses = plot_metrics_module.collect_series(parsed, plot_metrics_module.loss_keys(parsed))
    assert list(losses) == ["loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"]
    assert losses["loss"] == ([0.0, 10.0, 20.0], [2.0, 1.5, 1.0])
    aps = plot_metrics_module.collect_series(parsed, plot_metrics_module.AP_KEYS)
    assert aps["AP"] == ([10.0, 20.0], [0.05, 0.1])
    assert aps["AP50"][1] == pytest.approx([0.08, 0.16])


def test_extra_loss_keys_are_plotted_after_known_ones():
    rows = [{"iter": 0, "loss": 1.0, "loss_mask": 0.3, "loss_aux": 0.1, "lr": 0.1}]
    assert plot_metrics_module.loss_keys(rows)[-2:] == ["loss_aux", "loss_mask"]


def test_plot_metrics_writes_three_pngs(tmp_path):
    rows = [_train_line(i, 2.0 / (1 + i)) for i in range(0, 50, 5)] + [_eval_line(25, 0.1), _eval_line(50, 0.2)]
    metrics = _write(tmp_path / "metrics.jsonl", rows)
    paths = plot_metrics_module.plot_metrics(metrics, tmp_path / "plots")
    assert [p.name for p in paths] == ["losses.png", "lr.png", "ap.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (800, 450)
            pixels = np.asarray(image.convert("RGB"))
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # lines, text: not a blank canvas


def test_training_only_file_writes_no_ap_plot(tmp_path):
    metrics = _write(tmp_path / "metrics.jsonl", [_train_line(i, 1.0) for i in range(3)])
    paths = plot_metrics_module.plot_metrics(metrics, tmp_path)
    assert [p.name for p in paths] == ["losses.png", "lr.png"]
    assert not (tmp_path / "ap.png").exists()


def test_nothing_to_plot_raises(tmp_path):
    metrics = _write(tmp_path / "metrics.jsonl", [{"epoch": 1}, {"iter": 3, "note": "x"}])
    with pytest.raises(ValueError, match="no training"):
        plot_metrics_module.plot_metrics(metrics, tmp_path)


def test_malformed_line_is_named(tmp_path):
    metrics = _write(tmp_path / "metrics.jsonl", [_train_line(0, 1.0)], extra_lines=["{not json"])
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        plot_metrics_module.read_metrics(metrics)
    _write(metrics, [[1, 2]])
    with pytest.raises(ValueError, match=r"metrics.jsonl:1: expected a JSON object"):
        plot_metrics_module.read_metrics(metrics)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        plot_metrics_module.read_metrics(tmp_path / "missing.jsonl")


def test_missing_matplotlib_gives_install_hint(tmp_path, monkeypatch):
    metrics = _write(tmp_path / "metrics.jsonl", [_train_line(0, 1.0)])
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[viz\]"'):
        plot_metrics_module.plot_metrics(metrics, tmp_path)
    assert not (tmp_path / "losses.png").exists()


def test_command_line(tmp_path):
    metrics = _write(tmp_path / "metrics.jsonl", [_train_line(0, 1.0), _train_line(1, 0.9), _eval_line(1, 0.1)])
    done = subprocess.run([sys.executable, str(SCRIPT), str(metrics)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["ap.png", "losses.png", "lr.png"]
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope.jsonl")], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "nope.jsonl" in done.stderr


def _ap_figure(tmp_path, rows):
    """The AP plot of `rows`, saved as ap.png, with its axes and pixels."""
    from matplotlib.figure import Figure

    parsed = plot_metrics_module.read_metrics(_write(tmp_path / "metrics.jsonl", rows))
    series = plot_metrics_module.collect_series(parsed, plot_metrics_module.AP_KEYS)
    figure = plot_metrics_module.make_plot(Figure(figsize=(8, 4.5), dpi=100), "Evaluation (COCO AP)", "AP", series,
                                           "o-")
    figure.savefig(tmp_path / "ap.png")
    with Image.open(tmp_path / "ap.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    return figure.axes[0], pixels


def _ap_colour_at(axes, pixels, iteration, value):
    """Whether the AP line's colour is drawn within 2 px of the point (iteration, value)."""
    from matplotlib.colors import to_rgb

    colour = np.round(np.array(to_rgb(axes.get_lines()[0].get_color())) * 255)
    x, y = axes.transData.transform((iteration, value))
    row, column = pixels.shape[0] - int(round(y)), int(round(x))
    patch = pixels[row - 2:row + 3, column - 2:column + 3].astype(int)
    return bool((np.abs(patch - colour).sum(axis=-1) < 30).any())


def test_ap_plot_draws_lines_with_markers_over_the_evaluations(tmp_path):
    aps = [(200, 0.05), (400, 0.2), (600, 0.38), (800, 0.444)]
    axes, pixels = _ap_figure(tmp_path, [_train_line(i, 1.0) for i in range(0, 800, 100)]
                              + [_eval_line(it, ap) for it, ap in aps])
    ap_line = axes.get_lines()[0]
    assert ap_line.get_label() == "AP" and ap_line.get_marker() == "o" and ap_line.get_linestyle() == "-"
    assert list(ap_line.get_xdata()) == [200, 400, 600, 800]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == list(plot_metrics_module.AP_KEYS)
    assert [t.get_text() for t in axes.texts] == ["AP 0.444"]
    assert all(_ap_colour_at(axes, pixels, it, ap) for it, ap in aps)
    assert _ap_colour_at(axes, pixels, 300, 0.125)  # the line between two evaluations


def test_a_single_evaluation_is_visible_and_labelled(tmp_path):
    axes, pixels = _ap_figure(tmp_path, [{"iter": 800, "AP": 0.44}])
    assert axes.get_xlim()[0] == 0 and axes.get_xlim()[1] > 800  # the dot sits at the end of the run
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["AP"]
    assert [t.get_text() for t in axes.texts] == ["AP 0.440"]
    assert _ap_colour_at(axes, pixels, 800, 0.44)
    assert not _ap_colour_at(axes, pixels, 400, 0.44)  # a dot, no line to nowhere


def test_proposal_recall_of_an_rpn_only_run_gets_its_own_plot(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"iter": 1, "loss": 1.0, "lr": 0.01}, {"iter": 2, "AR100": 0.2, "AR1k": 0.3, "AR_s": 0.1, "AR_m": 0.3,
                                                   "AR_l": 0.5}]
    metrics.write_text("\n".join(json.dumps(r) for r in rows))
    paths = plot_metrics_module.plot_metrics(metrics, tmp_path)
    assert [p.name for p in paths] == ["losses.png", "lr.png", "ar.png"]


def test_mask_ap_is_drawn_beside_the_box_ap(tmp_path):
    """A Mask R-CNN run: ap.png has the box AP and the mask AP side by side, the same metric in the same colour."""
    from matplotlib.figure import Figure

    rows = [_train_line(0, 1.0)] + [{**_eval_line(it, ap), **{f"mask_{k}": v * 0.8 for k, v in _eval_line(it, ap).items()
                                                              if k != "iter"}} for it, ap in ((100, 0.1), (200, 0.25))]
    metrics = _write(tmp_path / "metrics.jsonl", rows)
    paths = plot_metrics_module.plot_metrics(metrics, tmp_path)
    assert [p.name for p in paths] == ["losses.png", "lr.png", "ap.png"]
    with Image.open(tmp_path / "ap.png") as image:
        assert image.size == (1400, 450)
    parsed = plot_metrics_module.read_metrics(metrics)
    mask = plot_metrics_module.collect_series(parsed, plot_metrics_module.MASK_AP_KEYS)
    assert mask["mask_AP"] == ([100.0, 200.0], [pytest.approx(0.08), pytest.approx(0.2)])
    figure = plot_metrics_module.make_panels(Figure(), [
        ("Boxes (COCO AP)", "AP", plot_metrics_module.collect_series(parsed, plot_metrics_module.AP_KEYS)),
        ("Masks (COCO mask AP)", "mask AP", plot_metrics_module.unprefixed(mask))], "o-")
    box_axes, mask_axes = figure.axes
    assert [a.get_title() for a in figure.axes] == ["Boxes (COCO AP)", "Masks (COCO mask AP)"]
    for axes in figure.axes:
        assert [t.get_text() for t in axes.get_legend().get_texts()] == list(plot_metrics_module.AP_KEYS)
    assert [line.get_color() for line in box_axes.get_lines()] == [line.get_color() for line in mask_axes.get_lines()]
    assert [t.get_text() for t in box_axes.texts + mask_axes.texts] == ["AP 0.250", "mask AP 0.200"]
    assert mask_axes.get_ylim() == box_axes.get_ylim()  # one AP scale


def _validation_line(it, ap, val_loss):
    return {**_eval_line(it, ap), "per_class": {"circle": {"AP": ap, "instances": 3}}, "val_loss": val_loss,
            "val_loss_classifier": val_loss / 2, "val_loss_box_reg": val_loss / 4}


def test_validation_losses_pair_with_their_training_losses_and_nested_values_are_ignored(tmp_path):
    from matplotlib.figure import Figure

    rows = [_train_line(i, 2.0 / (1 + i)) for i in range(0, 40, 5)] + \
        [_validation_line(20, 0.1, 1.2), _validation_line(40, 0.2, 0.9)]
    metrics = _write(tmp_path / "metrics.jsonl", rows)
    parsed = plot_metrics_module.read_metrics(metrics)
    assert plot_metrics_module.collect_series(parsed, ["per_class", "val_loss"]) == \
        {"val_loss": ([20.0, 40.0], [1.2, 0.9])}  # the nested per-class table is not a series
    keys = plot_metrics_module.loss_keys(parsed) + plot_metrics_module.validation_keys(parsed)
    series = plot_metrics_module.collect_series(parsed, keys)
    assert list(series)[-3:] == ["val_loss", "val_loss_classifier", "val_loss_box_reg"]
    axes = plot_metrics_module.make_plot(Figure(), "losses", "loss", series, "-").axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    for key in ("loss", "loss_classifier", "loss_box_reg"):
        train, val = lines[key], lines[f"val_{key}"]
        assert val.get_color() == train.get_color(), key  # the same colour
        assert (train.get_linestyle(), train.get_marker()) == ("-", "None")
        assert (val.get_linestyle(), val.get_marker()) == ("--", "o")  # dashed, a marker at each evaluation
        assert list(val.get_xdata()) == [20.0, 40.0]
    assert len({lines[key].get_color() for key in ("loss", "loss_classifier", "loss_box_reg")}) == 3
    paths = plot_metrics_module.plot_metrics(metrics, tmp_path / "plots")
    assert [p.name for p in paths] == ["losses.png", "lr.png", "ap.png"]
