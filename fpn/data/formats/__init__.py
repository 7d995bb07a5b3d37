"""Readers of the label formats people have (COCO JSON, YOLO, Pascal VOC, LabelMe), each giving a COCO dict.

    data = read_dataset("datasets/shapes")            # format detected: coco, yolo, voc or labelme
    train, val = split_by_fraction(data, 0.2, seed=0) # or select_split(data, "train"), select_split(data, "val")
"""
from fpn.data.formats.common import CocoBuilder, LabelledData
from fpn.data.formats.detect import FORMATS, detect_format, read_dataset
from fpn.data.formats.split import select_split, split_by_fraction, subset

__all__ = ["CocoBuilder", "FORMATS", "LabelledData", "detect_format", "read_dataset", "select_split",
           "split_by_fraction", "subset"]
