"""The units of work of a reindex, for Airflow tasks: building the engine of a task, and the four steps
(``plan`` / ``sync_partition`` / ``delete_stale`` / ``report``) as plain functions that the DAG factory's
TaskFlow tasks call, plus ``EmbedrailReindexOperator`` (the whole reindex as one task of your own DAG).

Errors: a user error (bad config, an index of another model/dims, a dims limit, bad input) fails the
task at once with its one-line message (``AirflowFailException``, no retries: retrying cannot fix it);
a store that is down stays retryable (``EmbedrailError.retryable``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import BaseOperator

from embedrail.errors import ConfigError, EmbedrailError
from embedrail.integration.airflow.connections import (
    TargetSpec,
    resolve_ledger,
    resolve_source,
    resolve_target,
)
from embedrail.integration.options import SyncOptions
from embedrail.integration.report import Report
from embedrail.integration.targets import Target
from embedrail.secrets import scrub_value

__all__ = ["EmbedrailReindexOperator", "ReindexJob", "cached_embedder", "fail_fast_on_user_errors"]

log = logging.getLogger("embedrail.airflow")


# ------------------------------------------------------------------------------------------------
# The embedding model: loaded once per (worker) process, reused by every task that runs in it.
_EMBEDDERS: dict[tuple[str, int | None, str, str], Any] = {}
_EMBEDDERS_LOCK = threading.Lock()


def cached_embedder(name: str, dims: int | None = None, device: str = "auto", **kwargs: Any) -> Any:
    """``embed_core.open_embedder(name, dims=, device=)``, cached per process by (model, dims, device).

    A model is loaded at most once per process, and only when a task must chunk or embed. With
    Local/Celery executors each task try is a fresh process, so it is loaded once per partition task;
    to load it once per GPU instead, serve it (``embedrail serve --model M --device cuda``) and give the
    DAG ``model="http://gpu-node:8000/v1#M"`` (key from ``EMBEDRAIL_EMBED_API_KEY``).
    """
    key = (name, dims, device, repr(sorted(kwargs.items())))
    with _EMBEDDERS_LOCK:
        emb = _EMBEDDERS.get(key)
        if emb is None:
            from embedrail.embed_core import open_embedder

            log.info("loading embedding model %s (dims=%s, device=%s) for this worker process", name, dims or "native", device)
            emb = _EMBEDDERS[key] = open_embedder(name, dims=dims, device=device, **kwargs)
        return emb


# ------------------------------------------------------------------------------------------------
@dataclass
class ReindexJob:
    """What a reindex task needs to build its ``SyncEngine`` (kept in the DAG file's closure or the
    operator, never in XComs or rendered task arguments): connections are resolved at run time."""

    source: Any
    targets: Sequence[str | Mapping[str, Any] | TargetSpec]  # URLs, conn ids, mappings or TargetSpecs
    ledger: str | None = None
    options: SyncOptions = field(default_factory=SyncOptions)
    connect: Callable[[str], Any] | None = None
    embedder_factory: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.targets, str | Mapping | TargetSpec):
            self.targets = [self.targets]
        self.targets = [TargetSpec.of(t) for t in self.targets]
        if not self.targets:
            raise ConfigError("a reindex job needs at least one target")
        if not isinstance(self.options, SyncOptions):
            self.options = SyncOptions.from_mapping(dict(self.options), where="ReindexJob.options")

    def engine(self, **overrides: Any) -> tuple[Any, list[str]]:
        """A ``SyncEngine`` for this task (options changed by ``overrides``, e.g. trigger params) and the
        secrets it resolved (for scrubbing what leaves the task)."""
        from embedrail.integration.engine import SyncEngine

        urls, secrets = [], []
        for t in self.targets:
            assert isinstance(t, TargetSpec)
            url, s = resolve_target(t)
            urls.append(Target(url, dims=t.dims))
            secrets += s
        ledger, s = resolve_ledger(self.ledger)
        options = self.options.replace(**overrides) if overrides else self.options
        source, source_options, s_src = resolve_source(self.source, options.source_options)
        if source_options != dict(options.source_options):
            options = options.replace(source_options=source_options)
        secrets += s_src
        engine = SyncEngine(source, urls, options=options, ledger=ledger, progress=False, connect=self.connect,
                            embedder_factory=self.embedder_factory or cached_embedder, run_owner=_run_owner())  # fmt: skip
        return engine, secrets + s


def _run_owner() -> str | None:
    """The ledger lease's owner inside a task: ``airflow:DAG_ID`` when the DAG runs one run at a time
    (``max_active_runs=1``, the DAG factory's default: a later run of the DAG may then take over the lease
    of a run that died), else ``airflow:DAG_ID:RUN_ID`` (runs of the DAG may overlap: each holds its own);
    None outside a task (the engine's own process owner)."""
    try:
        from airflow.sdk import get_current_context

        context = get_current_context()
        ti = context["ti"]
    except Exception:  # noqa: BLE001 - not inside a running task
        return None
    dag = context.get("dag")
    if dag is not None and getattr(dag, "max_active_runs", None) == 1:
        return f"airflow:{ti.dag_id}"
    return f"airflow:{ti.dag_id}:{ti.run_id}"


@contextmanager
def fail_fast_on_user_errors(secrets: Sequence[str] = ()) -> Iterator[None]:
    """Turn an error retrying cannot fix into ``AirflowFailException`` (one scrubbed line, no retries): a user
    error, and a bug (any exception that is not an ``EmbedrailError``: its traceback is logged once, here)."""
    try:
        yield
    except EmbedrailError as e:
        if e.retryable:
            raise
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(scrub_value(f"{type(e).__name__}: {e}", secrets)) from None
    except Exception as e:
        from airflow.sdk.exceptions import AirflowFailException

        log.exception("embedrail: internal error (a bug, not retried): please report it with this traceback")
        raise AirflowFailException(scrub_value(f"internal error (a bug, not retried): {type(e).__name__}: {e}", secrets)) from None


# ------------------------------------------------------------------------------------------------
# The steps (each builds its own engine: on separate workers nothing but XComs is shared)
def plan_run(job: ReindexJob, **overrides: Any) -> dict[str, Any]:
    """``SyncEngine.prepare()``: the ``RunContext`` as JSON (no secrets) for the later steps."""
    with fail_fast_on_user_errors():
        engine, secrets = job.engine(**overrides)
    with engine, fail_fast_on_user_errors(secrets):
        ctx = scrub_value(engine.prepare().to_dict(), secrets)
    log.info("embedrail plan: mode=%s model=%s dims=%s targets=%s%s", ctx["mode"], ctx["model"], ctx["spec"]["dims"],
             [t["key"] for t in ctx["targets"]], " (dry run)" if ctx["dry_run"] else "")  # fmt: skip
    for note in ctx["notes"]:
        log.info("embedrail: %s", note)
    return ctx


def _engine_for(job: ReindexJob, context: Mapping[str, Any]) -> tuple[Any, list[str]]:
    with fail_fast_on_user_errors():
        return job.engine(mode=context["mode"], dims=context["spec"]["dims"], dry_run=context["dry_run"])


def run_split(job: ReindexJob, context: dict[str, Any], count: int) -> list[dict[str, Any] | None]:
    """``SyncEngine.split``: the share of the source each partition reads, decided once for all of them."""
    if count <= 1:
        return [None] * max(count, 1)
    engine, secrets = _engine_for(job, context)
    with engine, fail_fast_on_user_errors(secrets):
        return scrub_value(engine.split(context, int(count)), secrets)


def run_partition(job: ReindexJob, index: int, count: int, context: dict[str, Any],
                  share: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """``SyncEngine.sync_partition``: embed and write this share of the documents (safe to retry)."""
    engine, secrets = _engine_for(job, context)
    with engine, fail_fast_on_user_errors(secrets):
        part = engine.sync_partition(int(index), int(count), context, share)
    log.info("embedrail partition %d/%d: %d documents, embedded %d (reused %d, from the index %d), upserted %s, metadata "
             "updated %s, deleted %s, failed %s", index, count, part["documents"], part["embedded"], part.get("reused", 0),
             part.get("from_index", 0), part["upserted"], part.get("retagged", {}), part["deleted"], part["failed"])  # fmt: skip
    return scrub_value(part, secrets)


def run_deletes(job: ReindexJob, context: dict[str, Any]) -> dict[str, Any]:
    """``SyncEngine.delete_absent``: remove the documents the source no longer has (snapshot deletes)."""
    engine, secrets = _engine_for(job, context)
    with engine, fail_fast_on_user_errors(secrets):
        rep = engine.delete_absent(context)
    log.info("embedrail deletes: %s", rep["deleted"])
    return scrub_value(rep, secrets)


def run_report(job: ReindexJob, context: dict[str, Any], partials: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``SyncEngine.finalize``: flush, switch full rebuilds, advance watermarks; the run report."""
    engine, secrets = _engine_for(job, context)
    with engine, fail_fast_on_user_errors(secrets):
        rep = scrub_value(engine.finalize(context, list(partials)), secrets)
    for line in Report.from_dict(rep).summary().splitlines():
        log.info("embedrail: %s", line)
    return rep


def run_eval(job: ReindexJob, settings: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``embedrail eval`` on the job's targets after a run (``settings``: ``evaluate.check_settings``): the
    report as a dict, and what misses the quality gate (``min``)."""
    from embedrail.integration.evaluate import run_settings

    urls, secrets = [], []
    for t in job.targets:
        url, s = resolve_target(t)
        urls.append(url.split("#", 1)[0])  # URL#dims=N: the index is the URL's
        secrets += s
    with fail_fast_on_user_errors(secrets):
        report, misses = run_settings(urls, settings)
    for line in report.table().splitlines():
        log.info("embedrail eval: %s", scrub_value(line, secrets))
    return scrub_value(report.to_dict(), secrets), [str(scrub_value(m, secrets)) for m in misses]


def incomplete_message(rep: Mapping[str, Any]) -> str:
    return Report.from_dict(dict(rep)).failure_message()


# ------------------------------------------------------------------------------------------------
class EmbedrailReindexOperator(BaseOperator):
    """A whole reindex as one task of your own DAG (prepare, sync, snapshot deletes, finalize in one
    process). For parallel partitions use ``build_reindex_dag`` or ``reindex_tasks`` instead.

    ```python
    EmbedrailReindexOperator(task_id="reindex", source="/data/docs.jsonl", targets=["conn:my_es/docs"],
                             ledger="conn:embedrail_ledger", mode="{{ params.mode }}", dims=256)
    ```

    ``source``/``targets``/``ledger`` take what ``build_reindex_dag`` takes; every ``SyncOptions`` field
    is a keyword (templated: ``mode``, ``dims``, ``dry_run``, ``model``). The report is the task's XCom; a
    run where a target failed fails the task (retryable: the next try catches up), a user error fails
    it without retries.
    """

    _TEMPLATED_OPTIONS = ("model", "mode", "dims", "dry_run")
    template_fields: Sequence[str] = ("source", "ledger", *_TEMPLATED_OPTIONS)
    ui_color = "#e8f4ea"

    def __init__(self, *, source: Any, targets: Sequence[str | Mapping[str, Any] | TargetSpec], ledger: str | None = None,
                 options: SyncOptions | None = None, connect: Callable[[str], Any] | None = None,
                 embedder_factory: Callable[..., Any] | None = None, **kwargs: Any) -> None:  # fmt: skip
        templated = {k: kwargs.pop(k) for k in self._TEMPLATED_OPTIONS if k in kwargs}  # validated when rendered
        values = {k: kwargs.pop(k) for k in list(kwargs) if k in SyncOptions.names()}
        super().__init__(**kwargs)
        self.source, self.ledger = source, ledger
        self.targets = [TargetSpec.of(t) for t in targets]
        self._options = (options or SyncOptions()).replace(**values) if values else (options or SyncOptions())
        for k in self._TEMPLATED_OPTIONS:
            setattr(self, k, templated.get(k, getattr(self._options, k)))
        self._connect, self._embedder_factory = connect, embedder_factory

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException

        with fail_fast_on_user_errors():
            rendered = {k: getattr(self, k) for k in self._TEMPLATED_OPTIONS}
            options = SyncOptions.from_mapping({**self._options.to_dict(), **rendered}, where=self.task_id)
        job = ReindexJob(self.source, self.targets, self.ledger, options, self._connect, self._embedder_factory)
        with fail_fast_on_user_errors():
            engine, secrets = job.engine()
        with engine, fail_fast_on_user_errors(secrets):
            rep = scrub_value(engine.run().to_dict(), secrets)
        for line in Report.from_dict(rep).summary().splitlines():
            log.info("embedrail: %s", line)
        if not rep["ok"] and not rep["dry_run"]:
            context["ti"].xcom_push(key="return_value", value=rep)  # readable even though the task fails
            raise AirflowException(incomplete_message(rep))
        return rep
