"""What training cannot fix in a trunk built without pretrained weights: shared by ResNet, RegNetX and MobileNetV3."""

from __future__ import annotations

from typing import List, Sequence

from torch import nn


class RecordsLoadedWeights(nn.Module):
    """A trunk that knows whether any of its tensors came from a state dict (`loaded_weights`), so that training a
    frozen part with nothing loaded into it can be reported."""

    loaded_weights = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Every module of the tree sees the whole state dict with its own prefix: any key under ours loads a tensor.
        if any(key.startswith(prefix) for key in state_dict):
            self.loaded_weights = True
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def describe_untrainable(loaded_weights: bool, norm: str, trainable_stages: int,
                      trainable_order: Sequence[str]) -> List[str]:
    """Describe the parts of a trunk that stay at their initial values when no weights were loaded.

    Args:
        loaded_weights: whether any tensor of the trunk came from a state dict (then nothing is reported).
        norm: the trunk's normalisation; "frozen_bn" without loaded weights is the identity, never learned.
        trainable_stages: how many entries of `trainable_order` train (0..len(trainable_order)).
        trainable_order: the trunk's stage names, last stage first (the order in which they become trainable).

    Returns:
        one sentence per problem, [] when there is none.
    """
    if loaded_weights:
        return []
    parts = []
    if norm == "frozen_bn":
        parts.append("frozen BatchNorm is the identity (its statistics are constants, never learned)")
    frozen = list(trainable_order[trainable_stages:])[::-1]  # stem first
    if frozen:
        names = " and ".join(frozen) if len(frozen) <= 2 else ", ".join(frozen[:-1]) + " and " + frozen[-1]
        parts.append(f"{names} are frozen at their random initialisation (trainable_stages={trainable_stages})")
    return parts
