"""Settings every test file shares."""
from fpn.data.masks import NUMPY_COPY_NOTICE


def pytest_configure(config):
    # pycocotools 2.0.11 on numpy 2 warns about its own `__array__` at every mask decode; fpn silences it where it
    # decodes (fpn/data/masks.py), the tests decode with pycocotools directly too
    config.addinivalue_line("filterwarnings", f"ignore:{NUMPY_COPY_NOTICE}:DeprecationWarning")
