"""A user's own DAG file, exactly as docs/airflow.md shows it ("In your own DAG"): the reindex tasks in a
TaskFlow DAG with a task of the user's using ``VectorStoreHook``, and the operator with a downstream task
reading its XCom; run twice each with ``airflow dags test`` (the Airflow CLI, in its own process), against
connections given the way deployments give them (``AIRFLOW_CONN_*``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_airflow_env import VENV_BIN, airflow_home  # noqa: F401 - the session fixture
from test_integration_support import assert_in_step, minilm, sentences, write_jsonl

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parent.parent / "docs" / "airflow.md"


def documented_dag_file() -> str:
    """The python block of docs/airflow.md that starts with ``# dags/my_reindex.py``, as written."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    (block,) = [b for b in blocks if b.startswith("# dags/my_reindex.py")]
    return block


def xcoms(dag_id: str, task_id: str) -> list[Any]:
    """The task's return values, one per run of the DAG, oldest first."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        rows = s.execute(
            select(XComModel.value).join(DagRun, (DagRun.run_id == XComModel.run_id) & (DagRun.dag_id == XComModel.dag_id))
            .where(XComModel.dag_id == dag_id, XComModel.task_id == task_id, XComModel.key == "return_value")
            .order_by(DagRun.id)
        ).all()  # fmt: skip
    return [_decoded(v) for (v,) in rows]


def _decoded(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:  # a string return value, stored as it is
            return value
    return value


def test_the_documented_user_dag_runs_green_twice(airflow_home, tmp_path):  # noqa: F811
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "my_reindex.py").write_text(documented_dag_file(), encoding="utf-8")
    docs = [{"id": f"doc{i}", "text": sentences(f"doc{i}", 3)} for i in range(8)]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    env = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(folder), "DOCS_JSONL": str(src),
           "AIRFLOW_CONN_MY_CHROMA": json.dumps({"conn_type": "embedrail_chroma", "extra": {"path": str(tmp_path / "chroma")}}),
           "AIRFLOW_CONN_EMBEDRAIL_LEDGER": json.dumps({"conn_type": "embedrail_ledger",
                                                        "extra": {"path": str(tmp_path / "ledger.sqlite")}})}  # fmt: skip
    for dag_id in ("docs_reindex", "docs_reindex_one_task"):
        for _ in range(2):
            out = subprocess.run([str(VENV_BIN / "airflow"), "dags", "test", dag_id], env=env, capture_output=True, text=True,
                                 timeout=600)  # fmt: skip
            assert out.returncode == 0 and "state=success" in (out.stdout + out.stderr), (out.stdout + out.stderr)[-4000:]
    first, second = xcoms("docs_reindex", "report")[-2:]
    assert first["ok"] and first["embedded"] + first["reused"] == first["chunks"] > 0 and first["documents"] == len(docs)
    assert second["ok"] and second["embedded"] == 0 and second["unchanged"] == first["chunks"]
    assert xcoms("docs_reindex", "records_in_the_index")[-1] == first["chunks"]
    assert xcoms("docs_reindex_one_task", "notify")[-2:] == [f"{len(docs)} documents, {first['chunks']} embedded",
                                                             f"{len(docs)} documents, 0 embedded"]  # fmt: skip
    emb = minilm()
    assert_in_step(f"chroma://{tmp_path / 'chroma'}?collection=docs", emb, docs, None)
    assert_in_step(f"chroma://{tmp_path / 'chroma'}?collection=docs_copy", emb, docs, None)
