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
    python_requires=">=3.9",
    packages=find_packages(include=["fpn", "fpn.*"]),
    # A library does not pin torch: the tested stack is pinned in constraints.txt. The ops are torch.library
    # custom operators with fake kernels (torch 2.4) and use nonzero_static on CUDA (torch 2.6).
    install_requires=["torch>=2.6", "numpy", "pycocotools", "tqdm", "pillow"],
    extras_require={
        # torchvision is the *reference* the parity tests compare against; fpn/ never imports it.
        "test": ["pytest", "torchvision", "matplotlib"],
        "viz": ["matplotlib"],
    },
)
