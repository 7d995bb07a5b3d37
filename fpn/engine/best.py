"""The best evaluation so far: which metric picks `best.pt`, whether an evaluation improved it, early stopping.

After every evaluation (periodic and final) the trainer calls `BestMetric.update` with the evaluation's result;
when the metric improved it writes `best.pt` from the live model (`save_best`). Higher is better for AP and AR,
lower for a loss (`val_loss`, `val_<term>`). With `patience` N > 0, `exhausted` turns true after N evaluations
in a row without improvement (early stopping). The state (best value, its iteration, the evaluations since) goes
into every checkpoint (`state_dict`) and comes back on --resume, so a resumed run keeps the same best.pt and
stops at the same evaluation as an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from fpn.errors import InputError

BEST_NAME = "best.pt"  # not checkpoint_*.pt: prune_checkpoints never removes it


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of `metric` are better: the losses (`val_loss`, `val_loss_classifier`, ...)."""
    return metric.startswith("val_") or metric.startswith("loss")


def check_best_metric(metric: str, valid: Sequence[str]) -> None:
    """InputError (one line naming the valid keys) when `metric` is not one of `valid`, before any training.

    Args:
        metric: the --best-metric value.
        valid: the keys an evaluation of this run's detector returns (e.g. AP..APl, mask_AP.., AR1k, val_loss).
    """
    if metric not in valid:
        raise InputError(f"--best-metric {metric!r} is not a key of this run's evaluation; valid for this "
                         f"detector: {', '.join(valid)}")


@dataclass
class BestMetric:
    """The best value of `metric` so far, its iteration, and the evaluations since it (for early stopping)."""
    metric: str = "AP"  # the evaluation key that picks best.pt
    patience: int = 0  # stop after this many evaluations without improvement; 0: never
    value: Optional[float] = None  # the best value so far (None: no evaluation yet)
    iteration: Optional[int] = None  # the iteration of that evaluation
    since: int = 0  # evaluations since the best one (0 right after an improvement)

    def update(self, result: Mapping[str, Any], iteration: int) -> bool:
        """Count the evaluation `result` of `iteration`; returns whether it is the new best.

        A value that is not a finite number (a diverged loss) never improves. Ties keep the earlier iteration.
        """
        value = result.get(self.metric)
        finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        better = finite and (self.value is None or (value < self.value if lower_is_better(self.metric)
                                                    else value > self.value))
        if better:
            self.value, self.iteration, self.since = float(value), int(iteration), 0
        else:
            self.since += 1
        return better

    @property
    def exhausted(self) -> bool:
        """True when early stopping is on and `patience` evaluations in a row brought no improvement."""
        return self.patience > 0 and self.since >= self.patience

    @property
    def last_chance(self) -> bool:
        """True when the next evaluation stops the run unless it improves (it is then the run's last one)."""
        return self.patience > 0 and self.since >= self.patience - 1

    def state_dict(self) -> Dict[str, Any]:
        """The plain-valued state stored in every checkpoint (`best`)."""
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `value`, `iteration` and `since` from a checkpoint's `best` of the same metric; a checkpoint of
        another metric (changed --best-metric on --resume) or without one starts afresh."""
        if state and state.get("metric") == self.metric:
            self.value, self.iteration, self.since = state.get("value"), state.get("iteration"), int(state["since"])

    def record(self, path: Path) -> Dict[str, Any]:
        """`best` of final_metrics.json: {"metric", "value", "iter", "path"}."""
        return {"metric": self.metric, "value": self.value, "iter": self.iteration, "path": str(path)}

    def summary(self, path: Path) -> str:
        """The final line on the best evaluation, e.g. "best AP 0.412 at iteration 600: runs/demo/best.pt"."""
        if self.value is None:
            return f"no evaluation gave a finite {self.metric}: no {BEST_NAME} was written"
        return f"best {self.metric} {self.value:.3f} at iteration {self.iteration}: {path}"

    def stop_line(self, iteration: int) -> str:
        """The early-stop log line."""
        best = "none" if self.value is None else f"{self.value:.3f} at iteration {self.iteration}"
        return (f"early stop at iteration {iteration}: {self.metric} did not improve for {self.since} evaluations "
                f"(best {best})")
