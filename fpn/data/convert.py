"""`python -m fpn.data.convert SRC OUT.json`: write the COCO JSON of a YOLO, Pascal VOC, LabelMe or COCO data set
(the tool and its options: fpn/tools/convert_data.py; the readers: fpn/data/formats/)."""
import sys

from fpn.tools.convert_data import main

if __name__ == "__main__":
    sys.exit(main())
