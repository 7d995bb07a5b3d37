"""`python -m fpn.predict --fast`: the optimized model gives the same results file, and says what it did."""
import json

import torch

import test_predict
from fpn.deploy.predictions import RESULTS_FILE
from fpn.tools.predict import main
from test_predict import _write_image

checkpoint = test_predict.checkpoint  # the fixture: a tiny GroupNorm model's checkpoint


def _run(tmp_path, checkpoint, name, *flags):
    out = tmp_path / name
    code = main([str(tmp_path / "in"), "--weights", str(checkpoint), "--output-dir", str(out), "--no-progress",
                 *flags])
    return code, (json.loads((out / RESULTS_FILE).read_text()) if code == 0 else None)


def test_fast_gives_the_same_results_and_one_line(tmp_path, checkpoint, capsys):
    (tmp_path / "in").mkdir()
    for i, size in enumerate([(80, 60), (50, 90)]):
        _write_image(tmp_path / "in" / f"{i}.png", i, size)
    code, eager = _run(tmp_path, checkpoint, "eager")
    assert code == 0 and not any(line.startswith("fast:") for line in capsys.readouterr().out.splitlines())
    code, fast = _run(tmp_path, checkpoint, "fast", "--fast")
    assert code == 0
    # the tiny model has GroupNorm: nothing to fold, but channels-last and the fp32 path
    assert "fast: folded 0 norms, channels-last, dtype float32" in capsys.readouterr().out.splitlines()
    assert len(fast) == len(eager) > 0
    for want, got in zip(eager, fast):
        assert {k: v for k, v in want.items() if k not in ("bbox", "score")} == \
               {k: v for k, v in got.items() if k not in ("bbox", "score")}
        torch.testing.assert_close(torch.tensor(got["bbox"]), torch.tensor(want["bbox"]), rtol=0, atol=0.011)
        assert abs(got["score"] - want["score"]) <= 1.1e-5


def test_fast_bf16_runs_and_fp16_on_cpu_is_refused(tmp_path, checkpoint, capsys):
    (tmp_path / "in").mkdir()
    _write_image(tmp_path / "in" / "0.png", 0)
    code, results = _run(tmp_path, checkpoint, "bf16", "--fast", "--fast-dtype", "bf16", "--device", "cpu")
    assert code == 0 and len(results) > 0
    assert "fast: folded 0 norms, channels-last, dtype bfloat16" in capsys.readouterr().out
    code, _ = _run(tmp_path, checkpoint, "fp16", "--fast", "--fast-dtype", "fp16", "--device", "cpu")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["predict: error: --fast-dtype: dtype torch.float16 is not supported on the CPU; use "
                   "torch.bfloat16 (or None for float32)"]
    code, _ = _run(tmp_path, checkpoint, "alone", "--fast-dtype", "bf16")
    assert code == 2 and "needs --fast" in capsys.readouterr().err
