"""One package, three detectors (Faster R-CNN, Mask R-CNN, FCOS): checkpoints record the architecture; training
(`--arch`, presets), evaluation, prediction and export take each kind; a file of one kind where another is needed
is a clear error."""
import json
import subprocess
import sys

import pytest
import torch

from fpn import FasterRCNNFPN, FCOSFPN, MaskRCNNConfig, MaskRCNNFPN
from fpn.errors import InputError
from fpn.config import FCOSConfig
from fpn.detectors.build import arch_of, build_detector, convert_config
from fpn.engine.checkpoint import load_checkpoint, load_detector, load_pretrained_weights, save_checkpoint
from test_checkpoint import tiny_config
from test_evaluate_script import _data_flags, _run as run_evaluate, val_set  # noqa: F401  (fixture)
from test_predict_errors import one_error_line
from test_train_script import load_train_script

TINY_FCOS = [
    "--backbone.depth", "18", "--backbone.width", "16", "--backbone.gn-groups", "8", "--fpn.out-channels", "32",
    "--head.gn-groups", "8", "--input.min-size", "64", "--input.max-size", "96", "--input.train-min-sizes", "64,72",
]


def tiny_fcos_config() -> FCOSConfig:
    return convert_config(tiny_config(), "fcos")


def _save(path, model, val_set):
    return save_checkpoint(path, model=model, optimizer=None, scheduler=None, scaler=None, iteration=0,
                           label_to_category=val_set.label_to_category, class_names=val_set.class_names)


@pytest.fixture(scope="module")
def checkpoints(val_set, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("two")
    torch.manual_seed(0)
    faster = _save(folder / "faster.pt", FasterRCNNFPN(val_set.num_classes, tiny_config()), val_set)
    fcos_config = tiny_fcos_config()
    fcos_config.head.gn_groups = 8
    fcos = _save(folder / "fcos.pt", FCOSFPN(val_set.num_classes, fcos_config), val_set)
    mask_config = convert_config(tiny_config(), "mask_rcnn")
    mask_config.mask.conv_channels = 16
    mask = _save(folder / "mask.pt", MaskRCNNFPN(val_set.num_classes, mask_config), val_set)
    return {"faster_rcnn": faster, "fcos": fcos, "mask_rcnn": mask}


def test_convert_config_keeps_the_shared_sections():
    faster = tiny_config()
    fcos = convert_config(faster, "fcos")
    assert isinstance(fcos, FCOSConfig) and arch_of(fcos) == "fcos"
    assert (fcos.backbone, fcos.fpn, fcos.input, fcos.channels_last) == (
        faster.backbone, faster.fpn, faster.input, faster.channels_last)
    assert fcos.head == FCOSConfig().head
    assert convert_config(fcos, "fcos") is fcos
    with pytest.raises(ValueError, match="unknown detector architecture 'yolo'"):
        convert_config(faster, "yolo")


@pytest.mark.parametrize("arch", ["faster_rcnn", "fcos", "mask_rcnn"])
def test_checkpoint_records_the_architecture_and_rebuilds_it(arch, checkpoints):
    assert load_checkpoint(checkpoints[arch])["arch"] == arch
    model, _ = load_detector(checkpoints[arch])
    assert arch_of(model) == arch
    source = torch.load(checkpoints[arch], weights_only=True)["model"]
    assert all(torch.equal(source[k], v) for k, v in model.state_dict().items())


def test_a_checkpoint_without_arch_is_a_faster_rcnn(checkpoints, tmp_path):
    old = torch.load(checkpoints["faster_rcnn"], weights_only=True)
    del old["arch"]
    torch.save(old, tmp_path / "old.pt")
    assert isinstance(load_detector(tmp_path / "old.pt")[0], FasterRCNNFPN)


def test_the_other_kind_where_one_is_needed_is_a_clear_error(checkpoints):
    with pytest.raises(InputError, match=r"holds a fcos detector; a faster_rcnn detector is needed here"):
        load_detector(checkpoints["fcos"], arch="faster_rcnn")
    with pytest.raises(InputError, match=r"holds a mask_rcnn detector; a faster_rcnn detector is needed here"):
        load_detector(checkpoints["mask_rcnn"], arch="faster_rcnn")
    fcos_model = build_detector(3, tiny_fcos_config())
    with pytest.raises(InputError, match=r"holds a faster_rcnn detector, but this model is fcos"):
        load_pretrained_weights(fcos_model, checkpoints["faster_rcnn"])


@pytest.mark.parametrize("arch", ["faster_rcnn", "fcos", "mask_rcnn"])
def test_evaluate_and_predict_load_each_kind_without_flags(arch, checkpoints, val_set, tmp_path):  # noqa: F811
    assert run_evaluate([str(checkpoints[arch]), *_data_flags(val_set)], tmp_path) == 0
    metrics = json.loads((tmp_path / "out" / "evaluate_metrics.json").read_text())
    assert "AP" in metrics and ("mask_AP" in metrics) == (arch == "mask_rcnn")
    run = subprocess.run([sys.executable, "-m", "fpn.predict", str(val_set.images_dir), "--weights",
                          str(checkpoints[arch]), "--output-dir", str(tmp_path / "pred"), "--device", "cpu",
                          "--no-progress"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert isinstance(results, list) and all(("segmentation" in r) == (arch == "mask_rcnn") for r in results)
    assert results or arch == "fcos"  # the untrained FCOS scores nothing above its 0.2 threshold


def test_proposals_of_an_fcos_checkpoint_is_a_clear_error(checkpoints, val_set, tmp_path, capsys):  # noqa: F811
    assert run_evaluate([str(checkpoints["fcos"]), *_data_flags(val_set), "--proposals"], tmp_path) == 2
    assert "holds a fcos detector, which is one-stage" in one_error_line(capsys, "evaluate.py")


def test_train_arch_fcos_trains_checkpoints_and_resumes(tmp_path):
    train = load_train_script()
    run = tmp_path / "run"
    argv = ["--preset", "cpu-demo", "--arch", "fcos", "--output-dir", str(run), "--device", "cpu", "--iters", "2",
            "--batch-size", "2", "--workers", "0", "--log-every", "1", "--warmup-iters", "1", "--steps", "2",
            "--synthetic-train-images", "4", "--synthetic-val-images", "2", "--synthetic-image-size", "64",
            "--eval-batch-size", "2", "--checkpoint-every", "1", *TINY_FCOS]
    assert train.main(argv) == 0
    checkpoint = load_checkpoint(run / "checkpoint_0000002.pt")
    assert checkpoint["arch"] == "fcos" and checkpoint["args"]["arch"] == "fcos"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m for m in metrics if "loss" in m]
    assert {"classification", "bbox_regression", "bbox_ctrness"} <= set(losses[0])
    assert (run / "final_metrics.json").exists()
    # the other architecture on the same output dir cannot resume from it: one line, exit code 2
    faster = argv[:3] + ["faster_rcnn"] + argv[4:-len(TINY_FCOS)] + TINY_FCOS[:8] + TINY_FCOS[10:]
    assert train.main(faster + ["--resume", "--iters", "3"]) == 2


def test_train_help_shows_the_fcos_config_flags(capsys):
    train = load_train_script()
    model = train.training_job(train.parse_args(["--preset", "cpu-demo", "--arch", "fcos", "--head.score-thresh",
                                                 "0.1"])).preset.model
    assert isinstance(model, FCOSConfig) and model.head.score_thresh == 0.1
    assert model.backbone.depth == 18  # cpu-demo's trunk
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "cpu-demo", "--arch", "fcos", "--rpn.nms-thresh", "0.5"])  # no RPN in FCOS


def test_train_help_shows_the_mask_config_flags(capsys):
    train = load_train_script()
    for argv in (["--preset", "mask-cpu-demo"], ["--preset", "cpu-demo", "--arch", "mask_rcnn"]):
        model = train.training_job(train.parse_args([*argv, "--mask.num-convs", "2", "--rpn.nms-thresh", "0.6"]))\
            .preset.model
        assert isinstance(model, MaskRCNNConfig) and model.mask.num_convs == 2 and model.rpn.nms_thresh == 0.6
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "mask-cpu-demo", "--help"])
    assert "--mask.conv-channels" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "cpu-demo", "--mask.num-convs", "2"])  # no mask branch in Faster R-CNN


def test_fcos_exports_to_torch_export_and_onnx(tmp_path):
    from fpn.deploy.export import export_onnx, export_program, run_onnx

    torch.manual_seed(0)
    config = tiny_fcos_config()
    config.head.gn_groups, config.head.score_thresh = 8, 0.05
    model = FCOSFPN(4, config).eval()
    torch.nn.init.normal_(model.head.classification_head.cls_logits.weight, std=0.3)  # spread: detections
    torch.nn.init.zeros_(model.head.classification_head.cls_logits.bias)
    image = torch.rand(3, 90, 120, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model([image])[0]
        program = export_program(model)
        boxes, scores, labels = program.module()(image)
    assert expected["boxes"].shape[0] > 0
    assert torch.equal(boxes, expected["boxes"]) and torch.equal(labels, expected["labels"])
    export_onnx(model, tmp_path / "fcos.onnx")
    boxes, scores, labels = run_onnx(tmp_path / "fcos.onnx", image)
    assert torch.equal(labels, expected["labels"])
    assert torch.allclose(boxes, expected["boxes"], rtol=0, atol=1e-3)
    assert torch.allclose(scores, expected["scores"], rtol=0, atol=1e-4)
