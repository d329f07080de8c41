"""Build a corpus from Python, without Prefect.

:func:`build` is what ``keyslice build --runner local`` runs and what a notebook calls::

    import keyslice
    keyslice.build("studies/", "corpus/", model="biomedclip", device="cuda")

:func:`execute` is the corpus-level build that every runner shares: sweep what an interrupted
build left, discover the studies, apply ``force_stages``, skip complete studies when
incremental, run the stages, record the run. A runner only decides how the per-study stages
are executed: :class:`SequentialRunner` and :class:`ThreadRunner` here, Prefect tasks on threads
or Dask in ``flows/build.py`` (the same :func:`execute`, called inside a flow run).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from keyslice.config import BuildConfig
from keyslice.corpus.lock import corpus_lock, sweep_temporaries
from keyslice.corpus.schemas import utcnow
from keyslice.pipeline.context import BuildContext, make_context
from keyslice.pipeline.progress import BuildObserver
from keyslice.pipeline.registry import select_stages
from keyslice.pipeline.run import StageOutcome, process_study
from keyslice.pipeline.runs import record_run
from keyslice.pipeline.studies import Discovery, Study, discover_studies
from keyslice.pseudonym import check_corpus_key

log = logging.getLogger("keyslice.build")

OnOutcome = Callable[[StageOutcome], None]


class Runner(Protocol):
    """Runs the given stages of every study and returns one outcome per (study, stage) run, telling
    ``on_outcome`` about each one as it finishes (progress display)."""

    def __call__(self, studies: list[Study], stages: list[str], ctx: BuildContext,
                 on_outcome: OnOutcome | None = None) -> list[StageOutcome]: ...


@dataclass(frozen=True)
class SequentialRunner:
    """One study after the other in this thread: the simplest thing to debug."""

    def __call__(self, studies: list[Study], stages: list[str], ctx: BuildContext,
                 on_outcome: OnOutcome | None = None) -> list[StageOutcome]:
        return [o for study in studies for o in process_study(study, ctx, stages, on_outcome)]


@dataclass(frozen=True)
class ThreadRunner:
    """``max_workers`` studies at a time, each through its stages in order, in a thread pool."""

    max_workers: int = 4

    def __call__(self, studies: list[Study], stages: list[str], ctx: BuildContext,
                 on_outcome: OnOutcome | None = None) -> list[StageOutcome]:
        pool = ThreadPoolExecutor(max_workers=max(self.max_workers, 1), thread_name_prefix="keyslice")
        try:
            per_study = pool.map(lambda study: process_study(study, ctx, stages, on_outcome), studies)
            return [o for outcomes in per_study for o in outcomes]
        except BaseException:  # Ctrl-C / SIGTERM: studies not started yet never start; running ones finish
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)


def execute(ctx: BuildContext, runner: Runner, *, studies_filter: list[str] | None = None,
            incremental: bool = False, stages: list[str] | tuple[str, ...] | None = None,
            logger: logging.Logger | logging.LoggerAdapter = log,
            observer: BuildObserver | None = None, preflight_model: bool = True,
            discovery: Discovery | None = None) -> dict[str, Any]:
    """The corpus build over ``ctx`` with ``runner``; the caller holds the corpus lock.

    ``incremental``: only studies that are not complete get run at all (new studies, failed or
    forced ones), which keeps a scheduled build over a large, mostly built corpus cheap.
    ``stages``: only these stages (default all), e.g. the GPU stage on a GPU machine; a stage whose
    upstream stage is not done reports ``blocked``. ``observer``: told about every stage outcome as
    it finishes (:mod:`keyslice.pipeline.progress`). Input folders that were not taken as studies
    are logged, recorded in the run (pseudonymised) and returned under ``skipped_inputs``.
    ``preflight_model``: load the selector model here once before any study runs, so missing weights
    stop the build with one :class:`ModelWeightsMissingError` instead of failing every study (the
    in-process runners reuse the loaded model; a Dask build passes False).
    ``discovery``: the studies of the input as :func:`preflight` found them, so that a build its caller
    checked first walks the input folder once (on network storage with thousands of study folders, the
    walk is the slowest part of start-up); discovered here when None.

    Refused before any study runs: a pseudonym key other than the corpus' (:class:`KeyMismatchError`)
    and an unusable manifest (:class:`ManifestError`). Damaged files of done stages (see
    :meth:`CheckpointStore.repair`) are moved aside and their stages redone.
    """
    cfg = ctx.config
    selected = select_stages(stages)
    check_corpus_key(cfg.out_dir, ctx.pseudonymize)
    swept = sweep_temporaries(cfg.out_dir)
    if swept:
        logger.info("removed %d half-written temporary file(s) left by an interrupted build", swept)
    started = utcnow()
    if discovery is not None and not discovery.made_for(cfg.input_dir, cfg.manifest, ctx.pseudonymize):
        raise ValueError("the discovery handed to this build was made from another input folder, manifest or "
                         "pseudonym key than its config's; call preflight(config) for this build")
    found = studies = discovery if discovery is not None else discover_studies(cfg.input_dir, ctx.pseudonymize,
                                                                               cfg.manifest)
    for folder in found.skipped:
        logger.warning("input folder %s not taken as a study: %s", folder.folder_id, folder.reason)
    if studies_filter:
        studies = [s for s in studies if s.study_id in set(studies_filter)]
    for stage in select_stages(cfg.force_stages) if cfg.force_stages else []:
        for study in studies:
            ctx.store.invalidate(stage, study.study_id)
    for study in studies:
        for damage in ctx.store.repair(study.study_id):
            logger.warning("damaged corpus file %s", damage)
    if incremental:
        complete = len(studies)
        studies = [s for s in studies if not all(ctx.store.is_done(stage, s.study_id) for stage in selected)]
        logger.info("incremental: %d complete studies skipped without tasks", complete - len(studies))
    logger.info("building %d studies into %s (run %s)", len(studies), cfg.out_dir, ctx.run_id)
    if preflight_model and "keyslice" in selected and any(not ctx.store.is_done("keyslice", s.study_id)
                                                          for s in studies):
        _check_model(cfg)

    if observer is not None:
        observer.started(len(studies), list(selected))
    try:
        outcomes = runner(studies, selected, ctx, observer.outcome if observer is not None else None)
    finally:
        if observer is not None:
            observer.finished()
    run = record_run(ctx, started, len(studies), outcomes, found)
    for o in outcomes:
        if o.status == "failed":
            logger.warning("study %s failed at stage %s: %s", o.study_id, o.stage, o.message)
    return {"run_id": ctx.run_id, "n_studies": len(studies),
            **{k: run[k] for k in ("n_done", "n_skipped", "n_failed", "n_blocked", "n_input_folders",
                                   "skipped_inputs", "started_at", "finished_at")},
            "outcomes": [o.__dict__ for o in outcomes]}


def _check_model(cfg: BuildConfig) -> None:
    from keyslice.selector import load_model

    load_model(cfg.model, device=cfg.device, precision=cfg.precision)


def preflight(cfg: BuildConfig, stages: list[str] | tuple[str, ...] | None = None) -> Discovery:
    """The refusals of :func:`execute`, made before an orchestrator starts (the CLI calls this first, so
    a refused build is one message instead of a failed flow run): another pseudonym key, an unusable
    manifest, missing model weights (loaded once here; an in-process build reuses the loaded model).

    Returns the studies it found: hand them to the build (``discovery=`` of :func:`execute`, :func:`build`
    and ``flows.build.run_build``) so that the input folder is walked once per build.
    """
    from keyslice.corpus.checkpoints import CheckpointStore
    from keyslice.pseudonym import load_pseudonymizer

    pseudonymize = load_pseudonymizer(Path(cfg.out_dir))
    check_corpus_key(cfg.out_dir, pseudonymize)
    studies = discover_studies(cfg.input_dir, pseudonymize, cfg.manifest)
    store = CheckpointStore(Path(cfg.out_dir))
    if "keyslice" in select_stages(stages) and any(not store.is_done("keyslice", s.study_id) for s in studies):
        _check_model(cfg)
    return studies


RUNNERS: dict[str, Callable[[BuildConfig], Runner]] = {
    "sequential": lambda cfg: SequentialRunner(),
    "threads": lambda cfg: ThreadRunner(cfg.max_workers),
}


def build(input_dir: Path | str | None = None, out_dir: Path | str | None = None, *,
          config: BuildConfig | Path | str | None = None, runner: str | Runner = "threads",
          incremental: bool = False, stages: list[str] | None = None, studies: list[str] | None = None,
          observer: BuildObserver | None = None, discovery: Discovery | None = None,
          **settings: Any) -> dict[str, Any]:
    """Build (or resume) the corpus ``out_dir`` from the studies in ``input_dir``, without Prefect.

    ``config``: a :class:`BuildConfig` or a YAML file of build settings; ``settings`` (``model=``,
    ``device=``, ``top_k=``... any :class:`BuildConfig` field) and the two folders override it.
    ``runner``: ``"threads"`` (``max_workers`` studies at once), ``"sequential"``, or any
    :class:`Runner`. ``studies``: only these study ids. ``observer``: progress as the build runs
    (:mod:`keyslice.pipeline.progress`). ``discovery``: the studies :func:`preflight` found for this
    config (the input folder is walked here otherwise). Returns the run summary (counts per outcome
    and every stage outcome), the same as the Prefect flow returns.
    """
    folders = {"input_dir": input_dir, "out_dir": out_dir}
    if isinstance(config, BuildConfig):
        given = {k: (Path(v) if k in folders else v) for k, v in {**folders, **settings}.items() if v is not None}
        cfg = replace(config, **given)
    else:
        cfg = BuildConfig.from_settings(config, **{k: (str(v) if k in folders and v is not None else v)
                                                   for k, v in {**folders, **settings}.items()})
    if not Path(cfg.input_dir).is_dir():
        raise FileNotFoundError(f"input folder {cfg.input_dir} does not exist")
    if isinstance(runner, str) and runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}: use one of {', '.join(RUNNERS)} or a Runner "
                         "(Prefect and Dask runners: flows.build.run_build)")
    run = RUNNERS[runner](cfg) if isinstance(runner, str) else runner
    ctx = make_context(cfg)
    with corpus_lock(cfg.out_dir):
        return execute(ctx, run, studies_filter=studies, incremental=incremental, stages=stages,
                       observer=observer, discovery=discovery)
