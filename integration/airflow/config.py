"""YAML DAG configs: one DAG per ``*.yaml`` in a folder (``dags/configs/``), each a mapping of
``build_reindex_dag`` settings and ``SyncOptions`` fields. Read while Airflow parses the DAG folder: no
network, no model. A file that cannot be read or built never takes the other DAGs of the folder down:
it becomes a paused DAG of its own whose one task fails with the error (and the error is logged and
emitted as a warning, which Airflow records for the DAG file)."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from functools import reduce
from pathlib import Path
from typing import Any

from airflow.sdk import Asset

from embedrail.errors import ConfigError
from embedrail.integration.airflow.dag import DAG_SETTINGS, build_reindex_dag
from embedrail.integration.options import SyncOptions
from embedrail.secrets import one_line

__all__ = ["YAML_KEYS", "ConfigWarning", "build_dags_from_folder", "load_dag_config"]

log = logging.getLogger("embedrail.airflow")


class ConfigWarning(UserWarning):
    """A DAG config file of the folder could not be built (its DAG fails; the others are unaffected)."""

#: every setting a config file may hold
YAML_KEYS = frozenset(DAG_SETTINGS - {"outlets", "start_date", "default_args"}) | SyncOptions.names()


def _schedule_from_yaml(value: Any) -> Any:
    """``"@daily"``/cron/None, or ``{assets: [uri, ...]}`` (run when any of them is updated; ``all: true``
    waits for all)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and set(value) <= {"assets", "all"} and value.get("assets"):
        uris = [value["assets"]] if isinstance(value["assets"], str) else list(value["assets"])
        assets = [Asset(uri=str(u)) for u in uris]
        if len(assets) == 1 or value.get("all"):
            return assets
        return reduce(lambda a, b: a | b, assets)
    raise ConfigError(f"schedule must be a cron string, null or {{assets: [uri, ...]}}, got {value!r}")


def load_dag_config(path: str | Path) -> dict[str, Any]:
    """Read one YAML config into ``build_reindex_dag`` keyword arguments (run options validated now)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of settings")
    unknown = set(data) - YAML_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {sorted(unknown)}; known: {sorted(YAML_KEYS)}")
    for k in ("source", "targets"):
        if not data.get(k):
            raise ConfigError(f"{path}: {k} is required")
    cfg = {k: v for k, v in data.items() if k not in SyncOptions.names()}
    cfg["options"] = SyncOptions.from_mapping({k: v for k, v in data.items() if k in SyncOptions.names()}, where=str(path))
    cfg.setdefault("dag_id", f"embedrail_{re.sub(r'[^A-Za-z0-9_]+', '_', path.stem)}")
    targets = cfg["targets"]
    cfg["targets"] = [targets] if isinstance(targets, str | Mapping) else list(targets)
    cfg["schedule"] = _schedule_from_yaml(cfg.get("schedule"))
    if "tags" in cfg:
        cfg["tags"] = ["embedrail", *[t for t in cfg["tags"] if t != "embedrail"]]
    return cfg


def build_dags_from_folder(folder: str | Path) -> dict[str, Any]:
    """One DAG per ``*.yaml``/``*.yml`` in ``folder`` (sorted), keyed by dag_id. A config that cannot be read
    or built becomes a paused DAG of its own (its ``dag_id`` if it names one, else ``embedrail_<file stem>``;
    tag ``config-error``) whose one task fails with the error: the other configs' DAGs load as usual."""
    out: dict[str, Any] = {}
    for path in sorted([*Path(folder).glob("*.yaml"), *Path(folder).glob("*.yml")]):
        try:
            cfg = load_dag_config(path)
            dag_id = cfg.pop("dag_id")
            if dag_id in out:
                raise ConfigError(f"dag_id {dag_id!r} is used by another config")
            out[dag_id] = build_reindex_dag(dag_id, **cfg)
        except Exception as e:  # noqa: BLE001 - one broken file must not take the folder's other DAGs down
            message = f"{path}: {one_line(e)}"
            log.error("embedrail: DAG config %s", message)
            warnings.warn(message, ConfigWarning, stacklevel=2)
            dag_id = _dag_id_of(path)
            if dag_id in out:
                dag_id += "__config_error"
            out[dag_id] = _broken_dag(dag_id, message)
    return out


def _dag_id_of(path: Path) -> str:
    """The dag_id a config names (read as plainly as possible), else the default from its file name."""
    try:
        import yaml

        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, Mapping) and isinstance(data.get("dag_id"), str) and re.fullmatch(r"[\w.-]+", data["dag_id"]):
            return data["dag_id"]
    except Exception:  # noqa: BLE001 - unreadable: the file name decides
        pass
    return f"embedrail_{re.sub(r'[^A-Za-z0-9_]+', '_', path.stem)}"


def _broken_dag(dag_id: str, message: str) -> Any:
    """A paused DAG that says what is wrong with its config: its one task fails with the error."""
    from airflow.sdk import dag, task, timezone

    @dag(dag_id=dag_id, schedule=None, start_date=timezone.datetime(2024, 1, 1), catchup=False, is_paused_upon_creation=True,
         tags=["embedrail", "config-error"], description=f"config error: {message}"[:1000],
         doc_md=f"**This DAG's config file is broken**, so it cannot run:\n\n    {message}")  # fmt: skip
    def broken() -> None:
        @task(task_id="config_error", retries=0)
        def config_error() -> None:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"the DAG config is broken: {message}")

        config_error()

    return broken()
