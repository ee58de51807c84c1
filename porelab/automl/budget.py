"""The time budget of a search job: phases measured as they happen, a deadline per study, trial admission.

The job (``porelab search --time-budget MINUTES``) has one deadline, ``start + budget``. Everything that is
not a study is a *fixed step* (data and the classical rows, registration, pseudo-labels, the Algorithm 1
comparison, the summary);
each is timed (:meth:`Budget.phase`) and its planned and spent seconds are logged on the parent run.

How the time left for the studies is split:

* after the data are ready, the unsupervised study gets ``unsupervised_share`` of what is left once a
  reserve for the fixed steps after it is set aside (``tail_fraction`` of the budget: nothing is measured
  yet); a study that ends early (trial cap) leaves its time to the next phases;
* the supervised study's deadline is recomputed whenever it is asked: the job's end minus the measured cost
  of the fixed steps still to come (registration as measured for the unsupervised model; the summary as the
  measured scoring seconds per scan × the scans its curves score; the Algorithm 1 comparison as the measured cost
  of the supervised study's first complete trial, when that comparison is asked for).

Inside a study (:class:`StudyClock`):

* a new trial is started only while the study has time for it to reach the pruner's first decision
  (``min_resource + 1`` epochs at the median measured epoch cost of the study, plus scoring one fold), so
  a trial that cannot be judged is never started;
* a running trial whose study's deadline has passed is stopped after its current epoch: pruned when the
  study already has a complete trial, else (nothing to register yet) every remaining fold of it trains one
  epoch only, so the study still ends with a scored model.

The clock is injectable (``clock=``), so the rules are tested without waiting.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: the plan ends this fraction of the budget before its end: a trial stopped at its study's deadline finishes
#: its current epoch, and the estimates of the fixed steps err; the job must end within budget + 10 %
SAFETY_FRACTION = 0.05


@dataclass
class Phase:
    """Planned and spent seconds of one step of the job."""

    planned: float | None = None
    spent: float = 0.0


class Budget:
    """The wall-clock budget of one job: ``seconds`` (``None``: no budget) from ``start`` (now)."""

    def __init__(self, seconds: float | None, *, clock: Callable[[], float] = time.monotonic):
        if seconds is not None and not seconds > 0:
            raise ValueError(f"a time budget must be > 0 seconds, got {seconds}")
        self.seconds = None if seconds is None else float(seconds)
        self.clock = clock
        self.start = clock()
        self.phases: dict[str, Phase] = {}

    @classmethod
    def minutes(cls, minutes: float | None, **kwargs) -> Budget:
        return cls(None if minutes is None else 60.0 * float(minutes), **kwargs)

    @property
    def limited(self) -> bool:
        return self.seconds is not None

    @property
    def end(self) -> float:
        """When the plan ends: the budget's end less :data:`SAFETY_FRACTION` of it."""
        return math.inf if self.seconds is None else self.start + (1 - SAFETY_FRACTION) * self.seconds

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.end - self.clock()

    def plan(self, name: str, seconds: float | None) -> None:
        self.phases.setdefault(name, Phase()).planned = None if seconds is None else max(0.0, float(seconds))

    def spent(self, name: str) -> float:
        return self.phases[name].spent if name in self.phases else 0.0

    @contextlib.contextmanager
    def phase(self, name: str, planned: float | None = None):
        """Time the enclosed step as phase ``name`` (added to earlier time spent under the same name)."""
        if planned is not None:
            self.plan(name, planned)
        ph = self.phases.setdefault(name, Phase())
        t0 = self.clock()
        try:
            yield ph
        finally:
            ph.spent += self.clock() - t0

    def split(self, share: float, tail: float) -> float:
        """Seconds for a study that gets ``share`` of what is left after a reserve ``tail`` (≥ 0)."""
        return max(0.0, share * (self.remaining() - max(0.0, tail)))

    def params(self) -> dict:
        """Planned seconds per phase (logged once, as MLflow params)."""
        out = {"time_budget_seconds": self.seconds if self.seconds is not None else "none"}
        out.update({f"planned_seconds_{k}": round(v.planned, 1) for k, v in self.phases.items()
                    if v.planned is not None})
        return out

    def metrics(self) -> dict:
        """Spent (and planned) seconds per phase and the whole job, as MLflow metrics."""
        out = {f"spent_seconds_{k}": v.spent for k, v in self.phases.items()}
        out.update({f"planned_seconds_{k}": v.planned for k, v in self.phases.items() if v.planned is not None})
        out["spent_seconds_total"] = self.elapsed()
        if self.seconds is not None:
            out["budget_seconds"] = self.seconds
            out["budget_used_fraction"] = self.elapsed() / self.seconds
        return out


@dataclass
class StudyClock:
    """Deadline and measured costs of one study (see the module docstring).

    ``deadline`` is a callable returning the absolute clock time at which the study must end (re-evaluated
    on every question, so measured costs of later steps move it); ``None`` means no deadline.
    """

    deadline: Callable[[], float] | None
    clock: Callable[[], float] = time.monotonic
    min_epochs: int = 2
    epoch_seconds: list[float] = field(default_factory=list)
    score_seconds: list[float] = field(default_factory=list)
    trial_seconds: dict[int, float] = field(default_factory=dict)
    complete_seconds: list[float] = field(default_factory=list)
    stopped_reason: str | None = None

    def remaining(self) -> float:
        return math.inf if self.deadline is None else self.deadline() - self.clock()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def epoch_cost(self) -> float | None:
        return statistics.median(self.epoch_seconds) if self.epoch_seconds else None

    def first_decision_cost(self) -> float | None:
        """Seconds for a new trial to reach the pruner's first decision and score one fold."""
        epoch = self.epoch_cost()
        if epoch is None:
            return None
        score = statistics.median(self.score_seconds) if self.score_seconds else epoch
        return self.min_epochs * epoch + score

    def admits(self) -> bool:
        """Whether a new trial may start: before any measurement only while the deadline is ahead; then
        while the time left covers :meth:`first_decision_cost`."""
        if self.deadline is None:
            return True
        left = self.remaining()
        cost = self.first_decision_cost()
        ok = left > 0 and (cost is None or left >= cost)
        if not ok:
            self.stopped_reason = (f"{max(left, 0):.0f} s left, a trial needs {cost:.0f} s to reach the "
                                   "pruner's first decision" if cost is not None else "deadline passed")
        return ok

    def metrics(self) -> dict:
        out = {"trials_started_here": len(self.trial_seconds),
               "trial_seconds_total": sum(self.trial_seconds.values())}
        if self.epoch_seconds:
            out["epoch_seconds_median"] = self.epoch_cost()
            out["epochs_trained"] = len(self.epoch_seconds)
        if self.deadline is not None:
            out["deadline_slack_seconds"] = self.remaining()
        return out


def parse_minutes(value, default: float | None) -> float | None:
    """A ``--time-budget`` value: ``None``/``""`` = ``default`` (the profile's), ``"none"``/``0`` = no
    budget, else minutes > 0 (``ConfigError`` otherwise)."""
    from porelab.errors import ConfigError

    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "profile")):
        return default
    if isinstance(value, str) and value.strip().lower() in ("none", "off"):
        return None
    try:
        minutes = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"time budget {value!r}: give minutes (a number > 0), 'none' or nothing") from None
    if minutes == 0:
        return None
    if not math.isfinite(minutes) or minutes < 0:
        raise ConfigError(f"time budget must be > 0 minutes (or 0/'none' for no budget), got {value!r}")
    return minutes


def tail_estimate(*, register: float | None, score_per_scan: float | None, summary_scans: int,
                  heuristic: float | None, fallback: float) -> float:
    """Seconds the fixed steps after the supervised study will take, from measured costs: one registration,
    scoring ``summary_scans`` scans for the summary, and the Algorithm 1 comparison (``heuristic``, its
    measured trial cost, ``None`` when not run). ``fallback`` stands in for what is not measured yet."""
    if register is None and score_per_scan is None:
        return fallback + (heuristic or 0.0)
    return (register or 0.0) + (score_per_scan or 0.0) * summary_scans + (heuristic or 0.0)


__all__ = ["SAFETY_FRACTION", "Budget", "Phase", "StudyClock", "parse_minutes", "tail_estimate"]
