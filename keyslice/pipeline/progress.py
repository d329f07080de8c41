"""Progress of a running build, for every runner.

:func:`keyslice.pipeline.api.execute` tells a :class:`BuildObserver` when the build starts, every
stage outcome as it finishes (from whatever thread or Prefect future it finished in), and when it
ends. :class:`BuildProgress` turns those outcomes into counts per stage, studies finished
(done / failed / blocked), studies per hour and time left. Two observers show it:
:class:`LogLines` (one line per finished study: logs, CI, pipes and Prefect's run logs) and
:class:`RichProgress` (a live display per stage on a terminal).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Protocol

from keyslice.pipeline.run import StageOutcome

STUDY_RESULTS = ("done", "failed", "blocked")


class BuildObserver(Protocol):
    """Told about a build as it runs; called from runner threads, so implementations are thread-safe."""

    def started(self, n_studies: int, stages: list[str]) -> None: ...

    def outcome(self, outcome: StageOutcome) -> None: ...

    def finished(self) -> None: ...


@dataclass(frozen=True)
class StudyFinished:
    """A study whose last selected stage has reported: ``result`` is ``failed`` when a stage failed,
    ``blocked`` when one could not run because an earlier stage is not done, else ``done``."""

    study_id: str
    result: str
    message: str
    n_finished: int
    n_studies: int
    studies_per_hour: float | None
    seconds_left: float | None
    counts: dict[str, int]        # studies finished so far per result


class BuildProgress:
    """Counts of a running build, fed one :class:`StageOutcome` at a time (thread-safe)."""

    def __init__(self, n_studies: int, stages: list[str], clock: Callable[[], float] = time.monotonic):
        self.n_studies, self.stages, self._clock = n_studies, list(stages), clock
        self._start = clock()
        self._lock = threading.Lock()
        self.per_stage: dict[str, Counter] = {stage: Counter() for stage in self.stages}
        self.studies: Counter = Counter()
        self._open: dict[str, list[StageOutcome]] = {}

    @property
    def n_finished(self) -> int:
        return sum(self.studies.values())

    def rate_per_hour(self) -> float | None:
        elapsed = self._clock() - self._start
        return self.n_finished / elapsed * 3600 if self.n_finished and elapsed > 0 else None

    def seconds_left(self) -> float | None:
        rate = self.rate_per_hour()
        return (self.n_studies - self.n_finished) / rate * 3600 if rate else None

    def add(self, outcome: StageOutcome) -> StudyFinished | None:
        """Count an outcome; when it is its study's last stage, the study's result."""
        with self._lock:
            self.per_stage.setdefault(outcome.stage, Counter())[outcome.status] += 1
            seen = self._open.setdefault(outcome.study_id, [])
            seen.append(outcome)
            if len(seen) < len(self.stages):
                return None
            del self._open[outcome.study_id]
            failed = [o for o in seen if o.status == "failed"]
            blocked = [o for o in seen if o.status == "blocked"]
            result, why = ("failed", failed[0]) if failed else ("blocked", blocked[0]) if blocked else ("done", None)
            self.studies[result] += 1
            message = f"{why.stage}: {why.message}" if why else ""
            return StudyFinished(outcome.study_id, result, message, self.n_finished, self.n_studies,
                                 self.rate_per_hour(), self.seconds_left(),
                                 {r: self.studies[r] for r in STUDY_RESULTS})


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def study_line(f: StudyFinished) -> str:
    """One log line for a finished study: where the build stands, its rate and the time left."""
    rate = "?" if f.studies_per_hour is None else f"{f.studies_per_hour:,.0f}"
    tally = ", ".join(f"{n} {r}" for r, n in f.counts.items())
    why = f" ({f.message})" if f.message else ""
    return (f"study {f.study_id} {f.result}{why}; {f.n_finished}/{f.n_studies} studies ({tally}); "
            f"{rate} studies/h; {format_duration(f.seconds_left)} left")


class LogLines:
    """One line per finished study through ``emit`` (a logger's ``info``, ``print``...)."""

    def __init__(self, emit: Callable[[str], None]):
        self._emit = emit
        self.progress: BuildProgress | None = None

    def started(self, n_studies: int, stages: list[str]) -> None:
        self.progress = BuildProgress(n_studies, stages)
        self._emit(f"building {n_studies} studies, stages {', '.join(stages)}")

    def outcome(self, outcome: StageOutcome) -> None:
        finished = self.progress.add(outcome) if self.progress else None
        if finished:
            self._emit(study_line(finished))

    def finished(self) -> None:
        pass


class RichProgress:
    """A live display on a terminal: one bar per stage (done / failed / blocked) and one for the
    studies, with studies per hour and time left."""

    def __init__(self, console=None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._display = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                 console=console, transient=False)
        self.progress: BuildProgress | None = None
        self._tasks: dict[str, int] = {}

    def started(self, n_studies: int, stages: list[str]) -> None:
        self.progress = BuildProgress(n_studies, stages)
        self._tasks = {stage: self._display.add_task(stage, total=n_studies, detail="") for stage in stages}
        self._tasks[""] = self._display.add_task("studies", total=n_studies, detail="")
        self._display.start()

    def outcome(self, outcome: StageOutcome) -> None:
        if self.progress is None:
            return
        finished = self.progress.add(outcome)
        counts = self.progress.per_stage[outcome.stage]
        self._display.update(self._tasks[outcome.stage], completed=sum(counts.values()),
                             detail=_stage_detail(counts))
        if finished:
            rate = "?" if finished.studies_per_hour is None else f"{finished.studies_per_hour:,.0f}"
            tally = " ".join(f"{r} {n}" for r, n in finished.counts.items())
            self._display.update(self._tasks[""], completed=finished.n_finished,
                                 detail=f"{tally} | {rate}/h | {format_duration(finished.seconds_left)} left")

    def finished(self) -> None:
        self._display.stop()


def _stage_detail(counts: Counter) -> str:
    return " ".join(f"{status} {counts[status]}" for status in ("done", "skipped", "failed", "blocked")
                    if counts[status] or status == "done")
