"""`python -m fpn.predict IMAGES... --weights CKPT`: detect objects in image files (the tool, its options and the
output schema: fpn/tools/predict.py; the library it calls: fpn/deploy/predictions.py)."""
import sys

from fpn.tools.predict import main

if __name__ == "__main__":
    sys.exit(main())
