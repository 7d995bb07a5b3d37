"""fpn: Faster R-CNN with a Feature Pyramid Network in plain PyTorch (no compiled extensions)."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="fpn",
    version="0.1.0",
    description="Faster R-CNN + FPN (Lin et al., CVPR 2017) in plain PyTorch",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    # Each floor is the release line that CI installs (constraints.txt pins it; tests/test_model_defaults.py
    # checks they agree): no older version is ever tested, and the code needs recent torch anyway (custom
    # operators with fake kernels, nonzero_static on CUDA, torch.library.get_kernel in fpn/ops/host_sync.py: 2.9).
    # Lower a floor only together with a CI run on that version. Python: the tested 3.11 (torch 2.14 needs 3.10,
    # numpy 2.4 and pillow 13 need 3.11).
    python_requires=">=3.11",
    packages=find_packages(include=["fpn", "fpn.*"]),
    # The packages' root is the project folder itself, said outright: with it `pip install -e .` puts this folder
    # on sys.path (a static .pth) instead of installing an import hook that runs after Python's own path search.
    # With the hook, a script in the folder above a clone called `fpn` imported the clone folder (no __init__.py)
    # as a namespace package: "cannot import name 'FasterRCNNFPN' from 'fpn' (unknown location)". On sys.path,
    # the regular package fpn/fpn/ wins over that namespace portion. The cost: the folder's other top-level
    # names (setup, scripts/, tests/, docs/) become importable too, as they were with `setup.py develop`.
    package_dir={"": "."},
    install_requires=["torch>=2.14", "numpy>=2.4", "pycocotools>=2.0.11", "tqdm>=4.70", "pillow>=13.0"],
    extras_require={
        # torchvision is the *reference* the parity tests compare against; fpn/ never imports it. Its release
        # pairs with torch's (0.29 with 2.14): an older one would pull in an older torch.
        # The ONNX export tests run in CI, so `test` holds the `export` extra's packages too (written out: the
        # extras are literals, which tests/test_model_defaults.py reads).
        "test": ["pytest>=9.2", "torchvision>=0.29", "matplotlib>=3.11", "onnx>=1.23", "onnxscript>=0.7",
                 "onnxruntime>=1.32", "tensorboard>=2.21"],
        "viz": ["matplotlib>=3.11"],
        # `python -m fpn.export --output model.onnx`: torch.onnx's exporter (onnx, onnxscript) and the runtime that
        # checks the written model against the eager one (onnxruntime).
        "export": ["onnx>=1.23", "onnxscript>=0.7", "onnxruntime>=1.32"],
        # `--tensorboard`: the training scalars and pictures as TensorBoard event files (torch.utils.tensorboard
        # writes them with this package).
        "tensorboard": ["tensorboard>=2.21"],
    },
)
