"""Training checkpoints: atomic writes, `weights_only` loading, housekeeping. Loading a detector for inference from
a checkpoint or a torchvision file is `fpn.io.loading` (re-exported here).

A checkpoint file `checkpoint_0001234.pt` (the number is the iterations completed) holds:

    model, optimizer, scheduler, scaler   state dicts (scaler is None without fp16)
    iteration                             int, iterations completed
    rng                                   this process's torch CPU / CUDA / numpy / python RNG states
    rng_per_rank                          [the same, of every process of the run, index = rank]
    arch                                  the detector: "faster_rcnn" or "fcos" (absent in older files: faster_rcnn)
    config                                the model's config.to_dict() (FasterRCNNConfig or FCOSConfig; tuples as lists)
    num_classes                           int, background included
    label_to_category                     {label: COCO category id}
    class_names                           {label: name}
    args                                  the training arguments, as a dict of plain values
    best                                  the best evaluation so far, fpn.engine.best.BestMetric.state_dict()
                                          (absent in older files); in best.pt: {metric, value, iter, path}

Everything is a tensor, dict, list, number, string, bool or None, so `torch.load(path, weights_only=True)` reads
it. A file is written to a temporary name in the same directory, flushed to disk, then renamed over the final
name: a crash while writing never leaves a truncated checkpoint behind, and the previous one stays intact. A
process killed mid-write (kill -9, or a SIGTERM from torchrun or SLURM) leaves its hidden temporary file
`.checkpoint_NNNNNNN.pt.XXXXXXXX.tmp`; `remove_stale_temp_files` deletes those, and only those, at the next start.
Resuming (which checkpoint, what a changed flag means) is `fpn.engine.resume`.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from fpn.detectors.build import arch_of
from fpn.engine.interrupts import interrupts_deferred
from fpn.engine.rng_state import capture_rng_state
from fpn.errors import InputError
from fpn.io.loading import (  # noqa: F401 (build_from_checkpoint, load_detector: re-exported from their old home)
    build_from_checkpoint, checkpoint_arch, is_training_checkpoint, load_detector, torchvision_detector,
)
from fpn.io.weights_file import read_weights

PathLike = Union[str, Path]
_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")
_TEMP_NAME = re.compile(r"^\.checkpoint_\d+\.pt\.[A-Za-z0-9_]+\.tmp$")  # atomic_save's temporary files


def checkpoint_path(output_dir: PathLike, iteration: int) -> Path:
    """The file name of the checkpoint taken after `iteration` iterations."""
    return Path(output_dir) / f"checkpoint_{iteration:07d}.pt"


def list_checkpoints(output_dir: PathLike) -> List[Tuple[int, Path]]:
    """(iteration, path) of every `checkpoint_NNNNNNN.pt` in `output_dir`, by increasing iteration."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)))


def last_checkpoint(output_dir: PathLike) -> Optional[Path]:
    """The checkpoint with the most iterations in `output_dir`, or None when there is none (for --resume)."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def remove_stale_temp_files(output_dir: PathLike) -> List[Path]:
    """Delete the temporary files a killed `atomic_save` left in `output_dir` (only names of that pattern).

    Call it when no other process writes checkpoints into the directory (at the start of a run, on rank 0).
    Returns the removed paths.
    """
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if _TEMP_NAME.match(p.name) and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def prepare_output_dir(output_dir: PathLike) -> List[Path]:
    """Create a run's directory, prove it writable, and remove what a killed checkpoint write left there.

    Returns:
        the stale temporary files removed.
    Raises:
        InputError: the directory cannot be created or written (named, with the reason).
    """
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir) as probe:
            probe.write(b"ok")
    except OSError as error:
        raise InputError(f"--output-dir {output_dir} is not writable ({error.strerror or error}): choose "
                         "another directory or fix its permissions") from error
    return remove_stale_temp_files(output_dir)


def prune_checkpoints(output_dir: PathLike, keep: int, protect: Tuple[int, ...] = ()) -> List[Path]:
    """Delete all but the newest `keep` checkpoints of `output_dir`, never those of the `protect` iterations.

    Args:
        output_dir: the run's directory.
        keep: how many of the newest checkpoints stay; 0 keeps everything.
        protect: iterations whose checkpoint always stays (the final one).
    Returns:
        the removed paths.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    if keep == 0:
        return []
    found = [(it, p) for it, p in list_checkpoints(output_dir) if it not in protect]
    doomed = [p for _, p in found[:-keep]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def atomic_save(obj: Any, path: PathLike) -> None:
    """torch.save to a temporary file in the destination directory, fsync, then os.replace onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes the file private (0600); give it a normal file's mode
        with interrupts_deferred(), os.fdopen(fd, "wb") as handle:  # Ctrl-C/SIGTERM: after the file is complete
            try:
                torch.save(obj, handle)
                handle.flush()
                os.fsync(handle.fileno())
            except (OSError, RuntimeError) as error:
                raise _write_error(error, path) from error
            os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
        raise
    _fsync_directory(path.parent)


def _write_error(error: BaseException, path: Path) -> BaseException:
    """The OSError behind a failed write, naming the destination: torch's zip writer reports a full disk as
    "RuntimeError: [enforce fail at inline_container.cc] unexpected pos", raised while handling the real
    `OSError: [Errno 28] No space left on device`. Anything else is returned as it is."""
    cause = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__context__ or cause.__cause__
    if cause is None:
        return error
    return OSError(cause.errno, cause.strerror or str(cause), str(path))


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows), where it is skipped.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def to_plain(value: Any) -> Any:
    """Recursively turn tuples into lists and paths/other objects into strings, for weights_only loading."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    return str(value)


def save_checkpoint(
    path: PathLike,
    *,
    model: nn.Module,
    optimizer: Optional[torch.optim.Optimizer],
    scheduler: Optional[Any],
    scaler: Optional[torch.amp.GradScaler],
    iteration: int,
    label_to_category: Dict[int, int],
    class_names: Dict[int, str],
    args: Optional[Dict[str, Any]] = None,
    rng_per_rank: Optional[List[Dict[str, Any]]] = None,
    best: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a training checkpoint atomically (see the module docstring for its contents).

    Args:
        path: destination file, usually `checkpoint_path(output_dir, iteration)`.
        model: the detector (FasterRCNNFPN or FCOSFPN), not wrapped in DistributedDataParallel.
        optimizer, scheduler, scaler: training state to resume from (None where absent).
        iteration: iterations completed.
        label_to_category: {contiguous label: COCO category id} of the training set.
        class_names: {contiguous label: name}.
        args: training arguments (dict); values are stored as plain types.
        rng_per_rank: every process's `capture_rng_state()`, index = rank (None: this process's only).
        best: the best-evaluation record to store as `best` (plain values; None: not stored).
    Returns:
        Path of the written file.
    """
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "iteration": int(iteration),
        "rng": capture_rng_state(),
        "rng_per_rank": list(rng_per_rank) if rng_per_rank is not None else [capture_rng_state()],
        "arch": arch_of(model),
        "config": to_plain(model.config.to_dict()),
        "num_classes": int(model.num_classes),
        "label_to_category": {int(k): int(v) for k, v in label_to_category.items()},
        "class_names": {int(k): str(v) for k, v in class_names.items()},
        "args": to_plain(dict(args or {})),
        # the parts passed in by their author (FasterRCNNFPN(..., box_head=MyHead())): the config cannot rebuild them
        "given_modules": list(getattr(model, "given_modules", ())),
    }
    if best is not None:
        payload["best"] = to_plain(dict(best))
    atomic_save(payload, path)
    return Path(path)


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; a missing, unreadable or foreign file raises InputError."""
    checkpoint = read_weights(path, "checkpoint")
    if not is_training_checkpoint(checkpoint):
        raise InputError(f"{path} is not a training checkpoint of this project (no 'model'/'config'/'iteration')")
    if map_location not in ("cpu", torch.device("cpu")):
        checkpoint = _to_device(checkpoint, map_location)
    return checkpoint


def _to_device(value: Any, device: Union[str, torch.device]) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def check_same_arch(found: str, model: nn.Module, what: str) -> None:
    """InputError when a file holds another detector than `model` (say so before comparing tensor names)."""
    expected = arch_of(model)
    if found != expected:
        raise InputError(f"{what} holds a {found} detector, but this model is {expected}: choose the matching "
                         f"--arch (or preset), or another file")


def load_pretrained_weights(model: nn.Module, path: PathLike) -> List[str]:
    """Initialise `model` from one of our checkpoints or a torchvision detector file (`--init-from`).

    Tensors whose shape differs from the model's (e.g. the class-specific layers of a detector trained on another
    label set) are left at their initial values; everything else must be present.

    Args:
        model: the detector to initialise, in place.
        path: our training checkpoint, or a torchvision `fasterrcnn_resnet50_fpn` / `fcos_resnet50_fpn` state dict
            file, of the model's architecture.
    Returns:
        the names of the model's tensors that were not loaded because their shape differs.
    Raises:
        InputError: the file is missing, or holds the other architecture.
        ValueError: its tensors do not match the model's.
    """
    path = Path(path)
    obj = read_weights(path, "--init-from file")
    if is_training_checkpoint(obj):
        check_same_arch(checkpoint_arch(obj), model, f"--init-from {path}")
        source = obj["model"]
    else:
        detector = torchvision_detector(obj, path)
        check_same_arch(arch_of(detector), model, f"--init-from {path}")
        source = detector.state_dict()
    own = model.state_dict()
    missing = sorted(set(own) - set(source))
    if missing:
        raise ValueError(f"{path} does not fit this model: {len(missing)} tensors missing, e.g. {missing[:3]}")
    skipped = [name for name, tensor in own.items() if source[name].shape != tensor.shape]
    # Only the class-specific outputs (num_classes scores, 4 * num_classes box deltas) may differ in shape.
    per_class = (model.num_classes, 4 * model.num_classes)
    wrong = [name for name in skipped if own[name].dim() == 0 or own[name].shape[0] not in per_class]
    if wrong:
        raise ValueError(
            f"{path} does not fit this model: {name_shapes(wrong, source, own)} (another backbone or width?)"
        )
    model.load_state_dict({k: v for k, v in source.items() if k in own and k not in skipped}, strict=False)
    return skipped


def name_shapes(names: List[str], source: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor]) -> str:
    shown = [f"{n} {tuple(source[n].shape)} vs {tuple(own[n].shape)}" for n in names[:3]]
    return f"{len(names)} tensors differ in shape, e.g. " + "; ".join(shown)
