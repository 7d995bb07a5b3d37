"""Two gloo processes on CPU: one DDP training step equals one step of a single process on the whole batch,
and sharded inference gathers every image's detections on rank 0."""
import contextlib
import io
import os
import socket
import sys

import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fpn.engine import distributed
from fpn.config import FasterRCNNConfig
from fpn.engine.loop import build_grad_scaler, train_step
from fpn.engine.evaluation import flatten_results, run_inference
from fpn.detectors.faster_rcnn import FasterRCNNFPN
from fpn.engine.schedule import build_optimizer

WORLD = 2
PER_RANK = 2


def ddp_config():
    """A tiny GN model whose losses are the same mean over 4 images as over two pairs of 2: sampling keeps every
    anchor and every proposal (no random subset), all images share size and boxes (the same anchor labels), and
    each image keeps exactly post_nms_top_n proposals (the same RoI count)."""
    cfg = FasterRCNNConfig()
    cfg.backbone.depth, cfg.backbone.width, cfg.backbone.norm = 18, 16, "gn"
    cfg.backbone.gn_groups, cfg.backbone.trainable_stages = 8, 5
    cfg.fpn.out_channels, cfg.roi_heads.representation_size = 32, 64
    cfg.input.min_size, cfg.input.max_size, cfg.input.train_min_sizes = 64, 64, (64,)
    cfg.rpn.batch_size_per_image, cfg.rpn.positive_fraction = 100_000, 1.0
    cfg.rpn.post_nms_top_n_train = 16
    cfg.roi_heads.batch_size_per_image, cfg.roi_heads.positive_fraction = 100_000, 1.0
    return cfg


def global_batch():
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=generator) for _ in range(WORLD * PER_RANK)]
    boxes = torch.tensor([[4.0, 4.0, 36.0, 40.0], [30.0, 20.0, 60.0, 62.0]])  # xyxy, the same in every image
    targets = [{"boxes": boxes.clone(), "labels": torch.tensor([1, 2])} for _ in images]
    return images, targets


def one_step(model, images, targets):
    optimizer = build_optimizer(model.module if isinstance(model, DistributedDataParallel) else model, 0.02)
    return train_step(model, images, targets, optimizer, build_grad_scaler(torch.device("cpu"), "none"), iteration=1)


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return torch.full((3, 8, 8), float(index)), {"image_id": 100 + index, "orig_size": (16, 8)}


class _Echo(nn.Module):
    """One detection per image whose box and score encode the image's value and the rank that saw it."""

    def forward(self, images):
        return [{"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]]) * (1 + image[0, 0, 0]),
                 "scores": torch.tensor([0.5]), "labels": torch.tensor([1])} for image in images]


def worker(rank, port, initial_state, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with distributed.distributed_session(torch.device("cpu"), timeout_minutes=2) as device:
        assert device.type == "cpu" and distributed.get_world_size() == WORLD and distributed.get_rank() == rank
        torch.manual_seed(rank)  # different RNG streams per rank, as in training
        model = FasterRCNNFPN(num_classes=3, config=ddp_config())
        model.load_state_dict(initial_state)
        images, targets = global_batch()
        shard = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        losses = one_step(DistributedDataParallel(model), images[shard], targets[shard])
        records = run_inference(_Echo(), _ListDataset(5), {1: 7}, device=device, batch_size=2)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            distributed.log(f"hello from rank {rank}")
        assert distributed.all_gather_objects(rank * 10) == [0, 10]
        assert distributed.broadcast_object(f"rank {rank}") == "rank 0"
        assert distributed.all_reduce_mean(torch.tensor([float(rank), 4.0])).tolist() == [0.5, 4.0]
        if rank == 0:
            assert printed.getvalue() == "hello from rank 0\n"
            torch.save({"state": model.state_dict(), "losses": losses, "records": records}, f"{out_dir}/rank0.pt")
        else:
            assert records is None and printed.getvalue() == ""
    leave_without_teardown()


def leave_without_teardown():
    """End a spawned test worker whose results are all checked or saved: os._exit skips the C++ destructors at
    interpreter exit, where gloo's threads occasionally abort a finished process ("terminate called without an
    active exception", about 1 run in 30-50 on a loaded 2-core machine). That teardown flake of the backend is
    not what these tests check; it is recorded as a known problem in the README's reliability notes."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_step_equals_single_process_step(tmp_path):
    torch.manual_seed(0)
    model = FasterRCNNFPN(num_classes=3, config=ddp_config())
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    mp.spawn(worker, args=(free_port(), initial, str(tmp_path)), nprocs=WORLD, join=True)
    result = torch.load(tmp_path / "rank0.pt", weights_only=True)

    images, targets = global_batch()
    losses = one_step(model, images, targets)
    for name, value in losses.items():
        assert abs(result["losses"][name] - value) < 1e-5 * max(1.0, abs(value)), name
    changed = 0
    for key, value in model.state_dict().items():
        assert torch.allclose(result["state"][key], value, atol=1e-5, rtol=0), key
        changed += not torch.equal(value, initial[key])
    assert changed > 50  # the step really moved the weights

    # rank 0 gathered both shards: images 0, 1 (rank 0) and 2, 3, 4 (rank 1), in order, mapped to category 7
    assert sorted(result["records"]) == [100, 101, 102, 103, 104]
    records = flatten_results(result["records"])
    assert [r["image_id"] for r in records] == [100, 101, 102, 103, 104]
    assert [r["bbox"][3] for r in records] == [2.0 * (1 + i) for i in range(5)]  # y scale 16 / 8
    assert {r["category_id"] for r in records} == {7}


def test_single_process_helpers_need_no_process_group(capsys):
    assert not distributed.is_distributed()
    assert (distributed.get_rank(), distributed.get_world_size(), distributed.is_main_process()) == (0, 1, True)
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object([3]) == [3]
    values = torch.tensor([1.0, 2.0])
    reduced = distributed.all_reduce_mean(values)
    assert torch.equal(reduced, values) and reduced.data_ptr() != values.data_ptr()
    distributed.log("only once")
    assert capsys.readouterr().out == "only once\n"
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
