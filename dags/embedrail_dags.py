"""embedrail reindex DAGs: one Airflow DAG per YAML file in ``configs/`` next to this file.

Thin on purpose: everything lives in ``embedrail.airflow``. Parsing reads the YAML files only —
no model is loaded, no store, connection or network is touched until a task runs.
Point ``EMBEDRAIL_DAG_CONFIGS`` at another folder to read configs from there.
"""

from __future__ import annotations

import os
from pathlib import Path

from embedrail.airflow import build_dags_from_folder

_CONFIGS = Path(os.environ.get("EMBEDRAIL_DAG_CONFIGS") or Path(__file__).with_name("configs"))

# Airflow picks up every DAG object at module level.
globals().update(build_dags_from_folder(_CONFIGS))
