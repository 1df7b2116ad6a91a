"""The reindex DAG: ``plan`` -> ``partitions`` -> ``sync_partition`` (mapped, one task per partition) ->
``delete_stale`` -> ``report``, built with the TaskFlow API from the steps in ``tasks.py``.

- ``plan``: ``SyncEngine.prepare()`` — resolves model/dims, ensures the indexes (or begins the full
  rebuilds); returns the JSON ``RunContext`` every later task takes (no secrets: targets are keyed by
  redacted URLs).
- ``partitions``: the list to map the embedding tasks over, ``[{"index": i, "count": n}, ...]`` (``n``:
  the ``partitions`` param; Airflow maps only over a task's return value, hence a task of its own).
- ``sync_partition`` (mapped): ``SyncEngine.sync_partition(i, n, ctx)`` — the documents whose stable hash
  of the id falls in partition *i*. Retrying it is safe: the ledger only moves after the store
  acknowledged, so a retry does the remaining work only.
- ``delete_stale``: ``SyncEngine.delete_absent(ctx)`` — snapshot deletes.
- ``report``: ``SyncEngine.finalize(ctx, partials)`` — flushes, switches full rebuilds; its XCom is the
  JSON report ``embedrail reindex --json`` prints. On success it marks one Asset per target as updated
  (``index_asset(target)``). A dry run ends *skipped* (no Asset event), a run where a target failed ends
  *failed* (no Asset event; the next run catches the target up); both still leave the report as XCom.

A user error (bad config, an index of another model/dims) fails a task at once, without retries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, Param, dag, get_current_context, task

from embedrail.connectors import is_embedded_url
from embedrail.errors import ConfigError
from embedrail.integration.airflow.connections import CONN_PREFIX, TargetSpec, expand_env, with_index
from embedrail.integration.airflow.tasks import (
    ReindexJob,
    incomplete_message,
    plan_run,
    run_deletes,
    run_eval,
    run_partition,
    run_report,
    run_split,
)
from embedrail.integration.evaluate import check_settings
from embedrail.integration.options import REPAIRS, SyncOptions, truthy
from embedrail.integration.targets import target_key
from embedrail.secrets import redact_url

__all__ = ["build_reindex_dag", "index_asset", "reindex_tasks"]

#: arguments of build_reindex_dag that are not run options (the YAML loader accepts these too)
DAG_SETTINGS = frozenset({
    "dag_id", "source", "targets", "ledger", "schedule", "partitions", "queue", "pool", "pool_slots", "executor_config",
    "embed_task_options", "retries", "retry_delay", "max_active_tis_per_dag", "tags", "description", "max_active_runs",
    "catchup", "outlets", "start_date", "default_args", "evaluate",
})  # fmt: skip


def index_asset(target: str | Mapping[str, Any] | TargetSpec) -> Asset:
    """The Asset a reindex DAG marks as updated for ``target``. Use the same call in a downstream DAG:
    ``@dag(schedule=[index_asset("conn:my_es/docs")])``.

    URI: the store URL without credentials (``${ENV}`` expanded from this process's environment, no
    network), or ``embedrail+conn://CONN_ID/INDEX`` for a connection target, or the spec's ``asset``.
    """
    spec = TargetSpec.of(target)
    if spec.asset:
        return Asset(uri=spec.asset)
    if spec.is_conn:
        conn_id, index = spec.conn_id_and_index()
        return Asset(uri=f"embedrail+conn://{conn_id}/{index or ''}".rstrip("/"))
    return Asset(uri=target_key(with_index(expand_env(spec.target, strict=False), spec.index)))


def _embedded(spec: TargetSpec) -> bool:
    if spec.target.startswith(CONN_PREFIX):
        return False
    try:
        return is_embedded_url(spec.target)
    except ConfigError:  # ${ENV} placeholders: decided when a task runs
        return False


def _param_dims(value: Any) -> int | None:
    """The ``dims`` trigger param: empty or 0 means "what the index records"."""
    if value in (None, "", 0, "0"):
        return None
    try:
        dims = int(value)
    except (TypeError, ValueError):
        dims = 0
    if dims <= 0:
        raise ConfigError(f"param dims must be a positive integer or empty, got {value!r}")
    return dims


def _asset_extra(report: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {"target": key, "model": report.get("model"), "dims": report.get("dims"), "fingerprint": report.get("fingerprint"),
            "mode": report.get("mode"), "upserted": report.get("upserted", {}).get(key, 0),
            "retagged": report.get("retagged", {}).get(key, 0), "deleted": report.get("deleted", {}).get(key, 0), "documents": report.get("documents")}  # fmt: skip


def reindex_tasks(job: ReindexJob, *, partitions: int = 1, assets: Sequence[Asset] = (), publish_assets: bool = True,
                  embed_task_options: Mapping[str, Any] | None = None, evaluate: Mapping[str, Any] | None = None) -> Any:  # fmt: skip
    """Add the reindex tasks to the DAG being defined (call it inside ``@dag`` or ``with DAG(...)``);
    returns the ``report`` task's output (the run report, as ``embedrail reindex --json`` prints it).

    ``job``: a ``ReindexJob`` (its targets may be URLs, connection ids or ``TargetSpec`` s). The DAG's
    params ``mode``, ``dims``, ``dry_run``, ``repair``, ``allow_mass_delete``, ``adopt`` and ``partitions``
    (if it has them) override ``job.options`` and ``partitions`` per run. ``assets``: one ``Asset`` per
    target, in order, marked updated (with the run's counts) when a run succeeds; none by default.
    ``embed_task_options`` (``queue``, ``pool``, ...) apply to the embedding tasks only. ``evaluate``: the
    settings of an ``evaluate`` task after a successful run (``embedrail eval`` on the targets: ``queries``,
    ``configs``, ``k``, ``chart``, ``min`` as a quality gate that fails the task; see ``evaluate.check_settings``);
    the report task's output is still what this returns."""
    if not isinstance(job, ReindexJob):
        raise ConfigError(f"reindex_tasks takes a ReindexJob, got {type(job).__name__}")
    assets = list(assets)
    if assets and len(assets) != len(job.targets):
        raise ConfigError(f"reindex_tasks: {len(assets)} assets for {len(job.targets)} targets; give one per target, in order, or none")
    embed_opts, default_partitions = dict(embed_task_options or {}), partitions
    eval_settings = check_settings(dict(evaluate), "reindex_tasks(evaluate=...)") if evaluate is not None else None

    @task
    def plan() -> dict[str, Any]:
        """SyncEngine.prepare(): model/dims resolved, indexes ensured or full rebuilds begun; the RunContext."""
        p = get_current_context()["params"]
        overrides: dict[str, Any] = {}
        if p.get("mode"):
            overrides["mode"] = str(p["mode"])
        if "dims" in p:
            overrides["dims"] = _param_dims(p.get("dims"))
        for flag in ("dry_run", "allow_mass_delete", "adopt"):
            if flag in p:
                overrides[flag] = truthy(p.get(flag))
        if p.get("repair") not in (None, ""):
            overrides["repair"] = p["repair"]
        return plan_run(job, **overrides)

    @task
    def partitions(context: dict[str, Any]) -> list[dict[str, Any]]:
        """The shares to map the embedding tasks over, decided once: ``[{"index": i, "count": n, "share": ...}]``
        (n: the param; share: the byte or key range of the source task i reads, see ``SyncEngine.split``)."""
        n = int(get_current_context()["params"].get("partitions") or default_partitions)
        return [{"index": i, "count": n, "share": s} for i, s in enumerate(run_split(job, context, n))]

    @task(**embed_opts)
    def sync_partition(index: int, count: int, context: dict[str, Any], share: dict[str, Any] | None = None) -> dict[str, Any]:
        """SyncEngine.sync_partition(index, count, ctx, share): embed and write this share of the documents."""
        return run_partition(job, index, count, context, share)

    @task
    def delete_stale(context: dict[str, Any]) -> dict[str, Any]:
        """SyncEngine.delete_absent(ctx): remove documents the source no longer has (snapshot deletes)."""
        return run_deletes(job, context)

    @task(outlets=list(assets))
    def report(context: dict[str, Any], partials: list[dict[str, Any]], deleted: dict[str, Any]) -> dict[str, Any]:
        """SyncEngine.finalize(ctx, partials): the run report (the CLI's --json), Asset events on success."""
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        rep = run_report(job, context, [*partials, deleted])
        ac = get_current_context()
        if rep["dry_run"] or not rep["ok"]:
            # a skipped or failed task has no return value: push the report so it stays readable
            ac["ti"].xcom_push(key="return_value", value=rep)
            if rep["dry_run"]:
                raise AirflowSkipException("dry run: nothing was written; the report is this task's XCom")
            raise AirflowFailException(incomplete_message(rep))
        events = ac.get("outlet_events")
        if events is not None and publish_assets and assets:
            for asset, t in zip(assets, context["targets"], strict=True):
                events[asset].extra = _asset_extra(rep, t["key"])
        return rep

    @task(task_id="evaluate")
    def evaluate_index(rep: dict[str, Any]) -> dict[str, Any]:
        """``embedrail eval`` on the targets just synced: the report (recall@k, MRR@10, nDCG@10, latency per
        target and configuration); fails when a metric is below the ``min`` the settings give."""
        from airflow.sdk.exceptions import AirflowFailException

        assert eval_settings is not None
        out, misses = run_eval(job, eval_settings)
        if misses:
            get_current_context()["ti"].xcom_push(key="return_value", value=out)
            raise AirflowFailException("retrieval quality below the gate: " + "; ".join(misses))
        return out

    context = plan()
    parts = sync_partition.partial(context=context).expand_kwargs(partitions(context))
    dele = delete_stale(context)
    parts >> dele
    final = report(context, parts, dele)
    if eval_settings is not None:
        evaluate_index(final)
    return final


def build_reindex_dag(
    dag_id: str,
    *,
    source: Any,
    targets: Sequence[str | Mapping[str, Any] | TargetSpec],
    ledger: str | None = None,
    options: SyncOptions | None = None,
    schedule: Any = None,
    partitions: int = 1,
    queue: str | None = None,
    pool: str | None = None,
    pool_slots: int = 1,
    executor_config: Mapping[str, Any] | None = None,
    embed_task_options: Mapping[str, Any] | None = None,
    retries: int = 2,
    retry_delay: timedelta | float = timedelta(seconds=30),
    max_active_tis_per_dag: int | None = None,
    outlets: Sequence[Asset] | None = None,
    tags: Sequence[str] = ("embedrail",),
    max_active_runs: int = 1,
    start_date: Any = None,
    catchup: bool = False,
    default_args: Mapping[str, Any] | None = None,
    description: str | None = None,
    connect: Callable[[str], Any] | None = None,
    embedder_factory: Callable[..., Any] | None = None,
    evaluate: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Build an Airflow DAG that keeps ``targets`` in step with ``source`` (see the module doc).

    ``source``/``targets`` take the CLI's strings; a target may also be ``conn:CONN_ID[/INDEX]`` (an Airflow
    connection, see ``connection_to_url``) or ``{"url"|"conn": ..., "index": ..., "asset": ...}``;
    ``${ENV}`` placeholders are expanded when a task runs. ``ledger``: a SQLAlchemy URL, ``conn:ID``, or
    ``None`` (SQLite under ``$AIRFLOW_HOME/embedrail``, one machine only). Run options: ``options`` (a
    ``SyncOptions``) and/or its fields as keywords (``model=``, ``dims=``, ``mode=``, ``batch_size=``...);
    other keywords go to ``@dag``. ``schedule``: a cron string, ``None``, an ``Asset`` or a list of Assets.
    ``partitions``: how many mapped embedding tasks. ``evaluate``: an ``evaluate`` task after each successful
    run (``embedrail eval`` on the targets; ``{queries: PATH, configs: [knn, hybrid:0.7], k: 10, chart: PNG,
    min: {ndcg@10: 0.6}}``, ``min`` failing the task below it).

    GPU routing: ``queue`` (Celery queue), ``pool``/``pool_slots`` (limit concurrent model users per GPU),
    ``executor_config`` (e.g. a Kubernetes pod override requesting ``nvidia.com/gpu``) and
    ``embed_task_options`` (any other operator argument) apply to the embedding tasks (``sync_partition``)
    only. Params a person can set when triggering: ``mode``, ``dims``, ``dry_run``, ``partitions``, ``repair``,
    ``allow_mass_delete``, ``adopt``. Embedded stores (``chroma:///path``, ``qdrant:///path``) take one
    partition: their files are written by one process at a time.
    Parsing builds only the task graph: no model load, no network, no connection lookup.
    """
    values = {k: kwargs.pop(k) for k in list(kwargs) if k in SyncOptions.names()}
    opts = (options or SyncOptions()).replace(**values) if values else (options or SyncOptions())
    if not targets:
        raise ConfigError(f"{dag_id}: at least one target is needed")
    if partitions < 1:
        raise ConfigError(f"{dag_id}: partitions must be >= 1, got {partitions}")
    specs = [TargetSpec.of(t) for t in targets]
    if partitions > 1:  # a connection's store is known only when a task runs: the engine refuses it there
        for spec in specs:
            if _embedded(spec):
                raise ConfigError(f"{dag_id}: {target_key(spec.target)} is an embedded store (its files are written by one "
                                  f"process at a time) and cannot take {partitions} partitions: use partitions=1, or a server")  # fmt: skip
    job = ReindexJob(source, specs, ledger, opts, connect, embedder_factory)
    assets = list(outlets) if outlets is not None else [index_asset(s) for s in specs]
    if start_date is None:
        from airflow.sdk import timezone

        start_date = timezone.datetime(2024, 1, 1)
    if isinstance(schedule, Asset):
        schedule = [schedule]
    delay = retry_delay if isinstance(retry_delay, timedelta) else timedelta(seconds=float(retry_delay))
    params = {
        "mode": Param(opts.mode, type="string", enum=["incremental", "full"],
                      description="incremental: embed what changed; full: build a new index and switch to it"),
        "dims": Param(opts.dims, type=["null", "integer"], minimum=1,
                      description="vector dimensions (empty: what the index records, else the model's native size)"),
        "dry_run": Param(opts.dry_run, type="boolean", description="plan only: embed and write nothing"),
        "partitions": Param(partitions, type="integer", minimum=1, maximum=1024, description="number of parallel embedding tasks"),
        "repair": Param(opts.repair, type="string", enum=list(REPAIRS),
                        description="auto: repair the drift the probe finds; on: compare every record and repair; off: report only"),
        "allow_mass_delete": Param(opts.allow_mass_delete, type="boolean",
                                   description=f"delete what the source lost even above max_delete_fraction ({opts.max_delete_fraction:g})"),
        "adopt": Param(opts.adopt, type="boolean", description="take over a non-empty index this ledger does not know"),
    }  # fmt: skip
    embed_opts: dict[str, Any] = {"pool_slots": pool_slots}
    for k, v in (("queue", queue), ("pool", pool), ("max_active_tis_per_dag", max_active_tis_per_dag)):
        if v:
            embed_opts[k] = v
    if executor_config:
        embed_opts["executor_config"] = dict(executor_config)
    embed_opts.update(embed_task_options or {})
    what = redact_url(source) if isinstance(source, str) and "://" in source else source if isinstance(source, str) else type(source).__name__
    doc = description or f"embedrail: keep {', '.join(a.uri for a in assets)} in step with {what}"

    @dag(dag_id=dag_id, schedule=schedule, start_date=start_date, catchup=catchup, params=params,
         default_args={"retries": retries, "retry_delay": delay, **dict(default_args or {})}, tags=list(tags),
         description=doc[:1000], doc_md=__doc__, max_active_runs=max_active_runs, **kwargs)  # fmt: skip
    def reindex() -> None:
        reindex_tasks(job, partitions=partitions, assets=assets, publish_assets=outlets is None, embed_task_options=embed_opts,
                      evaluate=evaluate)

    return reindex()
