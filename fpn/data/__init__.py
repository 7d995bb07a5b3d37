"""Data: COCO-format datasets, image decoding, checking image files before training, flip augmentation, samplers,
and the synthetic shapes data set.

Never imports the model. Resizing for the network happens inside the model (see `fpn.data.transforms`).
"""
from fpn.data.coco import CocoDetection, collate
from fpn.data.coco_names import COCO_CLASS_NAMES
from fpn.data.file_check import check_dataset_images, check_image_files, handle_bad_images
from fpn.data.image_io import load_rgb_image, pil_to_tensor01, to_uint8_tensor
from fpn.data.samplers import GroupedBatchSampler, InferenceSampler, TrainingSampler
from fpn.data.transforms import Compose, RandomHorizontalFlip, hflip

__all__ = [
    "CocoDetection",
    "collate",
    "COCO_CLASS_NAMES",
    "check_dataset_images",
    "check_image_files",
    "handle_bad_images",
    "load_rgb_image",
    "pil_to_tensor01",
    "to_uint8_tensor",
    "GroupedBatchSampler",
    "InferenceSampler",
    "TrainingSampler",
    "SHAPE_NAMES",
    "generate_synthetic_coco",
    "Compose",
    "RandomHorizontalFlip",
    "hflip",
]


def __getattr__(name: str):
    # The synthetic generator is imported on first use, not with the package: `python -m fpn.data.synthetic`
    # would otherwise find its own module already imported (runpy warns about that).
    if name in ("SHAPE_NAMES", "generate_synthetic_coco"):
        from fpn.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module 'fpn.data' has no attribute {name!r}")
