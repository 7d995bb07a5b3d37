"""Necks turning a backbone's C2..C5 into the feature pyramid P2..P6."""
from fpn.necks.fpn import FPN

__all__ = ["FPN"]
