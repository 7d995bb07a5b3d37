"""Resuming a 2-process (gloo) run is exact: 4 iterations + resume + 4 equals 8 uninterrupted, weights within 1e-6
and the same logged losses. Each rank's random streams (training sizes, anchor/RoI sampling) are its own, so
this holds only if every rank gets its own RNG states back. Resuming with another number of processes works
and says what it cannot keep exact."""
import json
import os

import torch
import torch.multiprocessing as mp

from fpn.data.synthetic import generate_synthetic_coco
from test_ddp import free_port, leave_without_teardown
from test_train_script import load_train_script, tiny_args

WORLD = 2


def _args(output_dir, data, *extra, iters):
    # several training sizes and RPN/RoI sampling of a subset: each rank draws from its RNG every iteration
    return tiny_args(output_dir, "--coco-root", str(data), "--checkpoint-every", "4", "--input.train-min-sizes",
                     "56,64,72", "--rpn.batch-size-per-image", "32", "--roi-heads.batch-size-per-image", "16",
                     *extra, iters=iters)


def _worker(rank, runs, ports):
    torch.set_num_threads(1)
    train = load_train_script()
    for argv, port in zip(runs, ports):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                          LOCAL_RANK=str(rank))
        code = train.main(argv + ["--dist-timeout-min", "2"])
        if code != 0:
            raise SystemExit(f"rank {rank}: train.main exited with {code}")
    leave_without_teardown()


def _losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: {k: v for k, v in r.items() if k.startswith("loss")} for r in lines if "loss" in r}


def test_two_process_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    data = tmp_path / "data"
    generate_synthetic_coco(data, 8, num_val=2, seed=3, min_size=64, max_size=96, progress=False)
    straight, part = tmp_path / "straight", tmp_path / "part"
    runs = [_args(straight, data, iters=8), _args(part, data, iters=4), _args(part, data, "--resume", iters=8)]
    mp.spawn(_worker, args=(runs, [free_port() for _ in runs]), nprocs=WORLD, join=True)

    a = torch.load(straight / "checkpoint_0000008.pt", weights_only=True)
    b = torch.load(part / "checkpoint_0000008.pt", weights_only=True)
    assert len(a["rng_per_rank"]) == WORLD and not torch.equal(a["rng_per_rank"][0]["torch"],
                                                                a["rng_per_rank"][1]["torch"])
    middle = torch.load(straight / "checkpoint_0000004.pt", weights_only=True)
    moved = 0
    for key, value in a["model"].items():
        assert torch.allclose(b["model"][key], value, atol=1e-6, rtol=0), key
        moved += not torch.equal(value, middle["model"][key])
    assert moved > 50  # iterations 5..8 changed the weights
    straight_losses, part_losses = _losses(straight), _losses(part)
    assert sorted(part_losses) == sorted(straight_losses) == list(range(1, 9))
    for it in range(5, 9):
        for name, value in straight_losses[it].items():
            assert abs(part_losses[it][name] - value) <= 1e-6 * max(1.0, abs(value)), (it, name)

    # the same 4 iterations resumed by one process: it runs, and says what is no longer exact
    one = tmp_path / "one"
    one.mkdir()
    (one / "checkpoint_0000004.pt").write_bytes((part / "checkpoint_0000004.pt").read_bytes())
    capsys.readouterr()
    assert load_train_script().main(_args(one, data, "--resume", iters=6)) == 0
    out = capsys.readouterr().out
    assert "written by 2 process(es) and this run has 1" in out and "differ from an uninterrupted run" in out
    assert "--batch-size" not in out  # the per-process batch did not change; the total batch did:
    assert "base LR" in out  # the LR follows the new total batch (linear scaling), said on the resume
