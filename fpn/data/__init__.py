"""Data: COCO-format datasets, image decoding, flip augmentation, samplers, and the synthetic shapes data set.

Never imports the model. Resizing for the network happens inside the model (see `fpn.data.transforms`).
"""
from fpn.data.coco import CocoDetection, collate
from fpn.data.image_io import load_rgb_image, pil_to_tensor01, to_uint8_tensor
from fpn.data.synthetic import SHAPE_NAMES, generate_synthetic_coco
from fpn.data.transforms import Compose, RandomHorizontalFlip, hflip

__all__ = [
    "CocoDetection",
    "collate",
    "load_rgb_image",
    "pil_to_tensor01",
    "to_uint8_tensor",
    "SHAPE_NAMES",
    "generate_synthetic_coco",
    "Compose",
    "RandomHorizontalFlip",
    "hflip",
]
