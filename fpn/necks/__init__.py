"""Necks turning a backbone's C2..C5 into the feature pyramid P2..P5, plus the extra levels handed to it."""
from fpn.necks.extra_levels import LastLevelMaxPool, LastLevelP6P7
from fpn.necks.fpn import FPN

__all__ = ["FPN", "LastLevelMaxPool", "LastLevelP6P7"]
