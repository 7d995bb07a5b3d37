"""The contract between a feature producer and its consumers: what each output map is."""
from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureSpec:
    """One feature map of a backbone or neck output dict: its channel count and stride in input pixels."""

    channels: int
    stride: int
