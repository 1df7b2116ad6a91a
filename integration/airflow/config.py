"""YAML DAG configs: one DAG per ``*.yaml`` in a folder (``dags/configs/``), each a mapping of
``build_reindex_dag`` settings and ``SyncOptions`` fields. Read while Airflow parses the DAG folder: no
network, no model, and a bad file is a clear import error."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import reduce
from pathlib import Path
from typing import Any

from airflow.sdk import Asset
from embedrail.integration.airflow.dag import DAG_SETTINGS, build_reindex_dag
from embedrail.integration.options import SyncOptions

from embedrail.errors import ConfigError

__all__ = ["YAML_KEYS", "build_dags_from_folder", "load_dag_config"]

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
    """One DAG per ``*.yaml``/``*.yml`` in ``folder`` (sorted), keyed by dag_id."""
    out: dict[str, Any] = {}
    for path in sorted([*Path(folder).glob("*.yaml"), *Path(folder).glob("*.yml")]):
        cfg = load_dag_config(path)
        dag_id = cfg.pop("dag_id")
        if dag_id in out:
            raise ConfigError(f"{path}: dag_id {dag_id!r} is used by another config")
        out[dag_id] = build_reindex_dag(dag_id, **cfg)
    return out
