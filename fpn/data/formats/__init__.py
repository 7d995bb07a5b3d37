"""Readers of the label formats people have (COCO JSON, YOLO, Pascal VOC, LabelMe), each giving a COCO dict."""
