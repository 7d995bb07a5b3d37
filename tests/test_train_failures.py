"""Failures that must not lose a training run: a full disk, a read-only disk, bad weight files and flags found
before any work, resume edges (fewer iterations than the checkpoint, a signal during a checkpoint write, metric
lines logged twice) and a process that stops answering in a 2-process run."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from fpn.engine import checkpoint as checkpoint_module
from fpn.engine import loop, trainer
from fpn.engine.checkpoint import atomic_save, list_checkpoints, load_checkpoint
from test_train_script import load_train_script, tiny_args

from test_faults import REPO, _args, data, helpers_env  # noqa: F401 (data: the 6-image synthetic set fixture)


def _error_lines(err):
    return [line for line in err.splitlines() if "error:" in line]


def _one_error_line(capsys):
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


class _FullDisk:
    """A file object that accepts `room` bytes and then fails every write as a full disk does."""

    def __init__(self, handle, room):
        self.handle, self.room = handle, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def _fill_disk_on_write(monkeypatch, write_number, room=1000):
    """The `write_number`-th checkpoint write (1-based) finds the disk full after `room` bytes."""
    real_fdopen = os.fdopen
    writes = {"n": 0}

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        writes["n"] += 1
        return _FullDisk(handle, room) if writes["n"] == write_number else handle

    monkeypatch.setattr(checkpoint_module.os, "fdopen", fdopen)


def test_a_full_disk_during_a_checkpoint_write_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    # torch's zip writer reports ENOSPC as "RuntimeError: [enforce fail ...] unexpected pos", raised while handling
    # the OSError: atomic_save digs the OSError out and names the checkpoint; no temporary file stays
    _fill_disk_on_write(monkeypatch, 1)
    path = tmp_path / "checkpoint_0000004.pt"
    with pytest.raises(OSError) as caught:
        atomic_save({"model": torch.zeros(100_000)}, path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert "No space left on device" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_stops_training_with_one_line_and_the_resume_command(tmp_path, data, monkeypatch, capsys):
    run = tmp_path / "run"
    _fill_disk_on_write(monkeypatch, 2)  # the checkpoint of iteration 2 is written, that of iteration 4 not
    assert load_train_script().main(_args(run, data, "--checkpoint-every", "2")) == 1
    line = _one_error_line(capsys)
    assert line == (f"train.py: error: {run / 'checkpoint_0000004.pt'}: No space left on device [Errno 28]; "
                    "training stopped after 4 iterations: the last good checkpoint is "
                    f"{run / 'checkpoint_0000002.pt'} (iteration 2); once the cause is fixed (space, permissions, "
                    "a writable disk), rerun the same command with --resume to continue from it")
    assert [it for it, _ in list_checkpoints(run)] == [2]
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())
    good = load_checkpoint(run / "checkpoint_0000002.pt")
    monkeypatch.undo()
    assert load_train_script().main(_args(run, data, "--checkpoint-every", "2", "--resume")) == 0
    assert "resumed from" in capsys.readouterr().out and good["iteration"] == 2
    assert [it for it, _ in list_checkpoints(run)] == [2, 4]


def test_a_file_too_large_for_the_os_limit_is_a_real_os_error_in_a_subprocess(tmp_path, data):
    # a real write failure from the kernel, without root: RLIMIT_FSIZE makes the checkpoint write fail with EFBIG
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from test_train_script import load_train_script, tiny_args
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        sys.exit(load_train_script().main(tiny_args({str(run)!r}, "--coco-root", {str(data)!r}, iters=2)))
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300,
                            env=helpers_env())
    assert result.returncode == 1, result.stderr
    lines = _error_lines(result.stderr)
    assert lines == [f"train.py: error: {run / 'checkpoint_0000002.pt'}: File too large [Errno 27]; training "
                     "stopped after 2 iterations: no checkpoint was written yet; once the cause is fixed (space, "
                     "permissions, a writable disk), rerun the same command to start again from iteration 0"], \
        result.stderr
    assert "Traceback" not in result.stderr
    assert not any(p.name.startswith(".checkpoint_") for p in run.iterdir())


def test_a_read_only_disk_mid_run_exits_1_naming_the_file_and_the_checkpoint(tmp_path, data, monkeypatch, capsys):
    train = load_train_script()
    real_write = trainer.MetricsLog.write

    def write(self, record):
        if record.get("iter") == 3 and "loss" in record:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self.path))
        return real_write(self, record)

    monkeypatch.setattr(trainer.MetricsLog, "write", write)
    run = tmp_path / "run"
    assert train.main(_args(run, data, "--checkpoint-every", "2")) == 1
    line = _one_error_line(capsys)
    assert line.startswith(f"train.py: error: {run / 'metrics.jsonl'}: Read-only file system [Errno 30]; "
                           "training stopped after 3 iterations: the last good checkpoint is "
                           f"{run / 'checkpoint_0000002.pt'} (iteration 2)"), line
    assert line.endswith("rerun the same command with --resume to continue from it")


# --- every file flag and the model config checked before any work (the synthetic set is not even generated) ---

class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo ran",))


def _bad_file(tmp_path, damage):
    path = tmp_path / f"{damage}.pth"
    if damage == "folder":
        path.mkdir()
    elif damage == "truncated":
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "pickle":
        torch.save({"conv1.weight": _RunsCode()}, path)
    return path  # "missing": never written


REASONS = {"missing": "no such file", "folder": "not a file", "truncated": "unreadable or truncated torch file",
           "pickle": "refused, the file holds Python objects that loading would have to execute"}


@pytest.mark.parametrize("damage", sorted(REASONS))
@pytest.mark.parametrize("flag, what", [("--backbone-weights", "ImageNet weights file"),
                                        ("--init-from", "--init-from file")])
def test_a_bad_weights_file_is_one_line_before_any_work(tmp_path, capsys, flag, what, damage):
    path = _bad_file(tmp_path, damage)
    run = tmp_path / "run"
    assert load_train_script().main(tiny_args(run, flag, str(path))) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"train.py: error: {what} {path}: {REASONS[damage]}"), line
    assert "weights_only" not in line
    assert not run.exists()  # no synthetic set generated, no output folder made


@pytest.mark.parametrize("extra, message", [
    (["--backbone.depth", "19"], "ResNet: unsupported depth 19"),
    (["--coco-root", "/nonexistent/coco"], "--coco-root /nonexistent/coco: no such folder"),
    (["--train-images", "/nonexistent/img", "--train-annotations", "/nonexistent/a.json",
      "--val-images", "/nonexistent/img", "--val-annotations", "/nonexistent/a.json"],
     "--train-images /nonexistent/img: no such folder"),
])
def test_a_bad_config_value_or_data_path_is_one_line_before_any_work(tmp_path, capsys, extra, message):
    run = tmp_path / "run"
    assert load_train_script().main(tiny_args(run, *extra)) == 2
    assert message in _one_error_line(capsys)
    assert not run.exists()


def test_a_coco_root_without_its_annotation_file_is_named(tmp_path, data, capsys):
    root = tmp_path / "coco"
    (root / "train2017").mkdir(parents=True)
    (root / "val2017").mkdir()
    assert load_train_script().main(tiny_args(tmp_path / "run", "--coco-root", str(root))) == 2
    assert (f"--coco-root {root}: {root / 'annotations/instances_train2017.json'}: no such file"
            in _one_error_line(capsys))


def test_an_init_from_file_of_another_model_is_refused_before_any_work(tmp_path, data, capsys):
    other = tmp_path / "other"
    assert load_train_script().main(_args(other, data, iters=1)) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    wider = ["--fpn.out-channels", "48"]  # the same trunk, another pyramid width: the tensors do not fit
    argv = tiny_args(run, "--init-from", str(other / "checkpoint_0000001.pt"), *wider)
    assert load_train_script().main(argv) == 2
    assert "does not fit this model" in _one_error_line(capsys)
    assert not run.exists()


# --- resume edges ---

def test_resume_with_fewer_iters_than_the_checkpoint_is_one_line_before_any_work(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert load_train_script().main(_args(run, data, "--checkpoint-every", "3", iters=6)) == 0
    capsys.readouterr()
    assert load_train_script().main(_args(run, data, "--checkpoint-every", "3", "--resume", iters=4)) == 2
    captured = capsys.readouterr()
    line = _error_lines(captured.err)
    assert line == [f"train.py: error: --resume: {run / 'checkpoint_0000006.pt'} is at iteration 6, past --iters 4: "
                    "give --iters above 6 to train on, or evaluate it with scripts/evaluate.py "
                    f"{run / 'checkpoint_0000006.pt'}"], captured.err
    assert "applied from iteration" not in captured.out


def test_a_signal_during_a_checkpoint_write_names_the_new_checkpoint_and_prunes(tmp_path, data, monkeypatch, capsys):
    train = load_train_script()
    real_save = trainer.save_checkpoint

    def save(path, **kwargs):
        result = real_save(path, **kwargs)
        if kwargs["iteration"] == 3:  # SIGTERM arrives while the checkpoint of iteration 3 is being written
            signal.raise_signal(signal.SIGTERM)
        return result

    monkeypatch.setattr(trainer, "save_checkpoint", save)
    run = tmp_path / "run"
    argv = _args(run, data, "--checkpoint-every", "1", "--keep-checkpoints", "2", iters=6)
    assert train.main(argv) == 130
    err = capsys.readouterr().err
    assert (f"terminated (SIGTERM) after 3 iterations; the last good checkpoint is {run / 'checkpoint_0000003.pt'} "
            "(iteration 3)") in err, err
    assert [it for it, _ in list_checkpoints(run)] == [2, 3]  # --keep-checkpoints 2 held after the write


def test_metrics_of_iterations_redone_after_a_resume_are_logged_once(tmp_path, data, monkeypatch, capsys):
    train = load_train_script()
    run = tmp_path / "run"
    real_forward_calls = {"n": 0}
    real_step = loop.__dict__["train_step"]

    def step(*args, **kwargs):
        real_forward_calls["n"] += 1
        if real_forward_calls["n"] == 4:  # killed during iteration 4: 3 was logged, the checkpoint is at 2
            raise KeyboardInterrupt()
        return real_step(*args, **kwargs)

    monkeypatch.setitem(loop.__dict__, "train_step", step)
    assert train.main(_args(run, data, "--checkpoint-every", "2", iters=4)) == 130
    logged = [json.loads(line)["iter"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"iter": 4, "lo')  # a line cut short by a kill -9
    monkeypatch.undo()
    assert train.main(_args(run, data, "--checkpoint-every", "2", "--resume", iters=4)) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    training = [r["iter"] for r in records if "loss" in r]
    assert training == [1, 2, 3, 4]
    assert [r["iter"] for r in records if "AP" in r] == [4]


# --- a process that stops answering in a 2-process run ---

def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_stopped_rank_ends_the_run_with_one_line_naming_it(tmp_path, data):
    run = tmp_path / "run"
    # each rank runs train.py's main; rank 1 stops itself (SIGSTOP, as a hung or paused process) in iteration 3
    worker = textwrap.dedent(f"""
        import os, signal, sys
        import torch
        torch.set_num_threads(1)
        from test_train_script import load_train_script, tiny_args
        from fpn.engine import loop
        train = load_train_script()
        real_step = loop.__dict__["train_step"]
        def step(*args, iteration, **kwargs):
            if os.environ["RANK"] == "1" and iteration == 3:
                os.kill(os.getpid(), signal.SIGSTOP)
            return real_step(*args, iteration=iteration, **kwargs)
        loop.__dict__["train_step"] = step
        argv = tiny_args({str(run)!r}, "--coco-root", {str(data)!r}, "--checkpoint-every", "2",
                         "--dist-timeout-min", "0.1", iters=4)
        code = train.main(argv)
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
        """)
    port = _free_port()
    ranks = []
    for rank in range(2):
        env = dict(helpers_env(), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        ranks.append(subprocess.Popen([sys.executable, "-c", worker], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        out, err = ranks[0].communicate(timeout=240)
    finally:
        ranks[1].kill()
        ranks[1].communicate()
    assert ranks[0].returncode == 1, err
    lines = _error_lines(err)
    assert lines == ["train.py: error: rank 1 stopped answering (rank 0 waited for it for --dist-timeout-min 0.1 in "
                     "a collective operation); training stopped: the last good checkpoint is "
                     f"{run / 'checkpoint_0000002.pt'} (iteration 2); rerun the same command with --resume to "
                     "continue from it"], err
    assert "Traceback" not in err
