"""Airflow glue (Airflow 3.x, the TaskFlow API of ``airflow.sdk``), split by role:

- ``connections``: Airflow connections -> store/ledger URLs, ``${ENV}`` placeholders, secret masking
  (the provider "hook" role);
- ``tasks``: the reindex steps as functions, the per-process model cache, and
  ``EmbedrailReindexOperator`` (a whole reindex as one task of your own DAG);
- ``dag``: ``build_reindex_dag`` (plan -> mapped partitions -> deletes -> report) and ``reindex_tasks``
  (the same four tasks inside a DAG of your own);
- ``config``: one DAG per YAML file (``build_dags_from_folder``);
- ``hooks``: ``VectorStoreHook`` / ``ChromaHook`` / ``LedgerHook``, a store or the ledger from an Airflow
  connection in your own tasks (the connection types are registered by ``embedrail._provider``).

This package is the only part of ``integration`` that imports Airflow; the rest works without it.

```python
from embedrail.integration.airflow import build_reindex_dag

dag = build_reindex_dag(
    "docs_reindex",
    source="/data/docs.jsonl",
    targets=["conn:my_es/docs", "weaviate://weaviate:8080/Docs?grpc_port=50051"],
    ledger="conn:embedrail_ledger",        # PostgreSQL when workers are spread over machines
    schedule="@hourly",                    # or Asset("file:///data/docs.jsonl") / [Asset, ...]
    partitions=4,                          # 4 mapped tasks, each embeds its share of the documents
    queue="gpu",                           # route the embedding tasks to GPU workers
    model="Qwen/Qwen3-Embedding-0.6B", dims=512,   # any SyncOptions field
)
```
"""

from __future__ import annotations

from embedrail.integration.airflow.config import build_dags_from_folder, load_dag_config
from embedrail.integration.airflow.connections import (
    CONN_PREFIX,
    TargetSpec,
    connection_to_url,
    expand_env,
    resolve_ledger,
    resolve_target,
    with_index,
)
from embedrail.integration.airflow.dag import build_reindex_dag, index_asset, reindex_tasks
from embedrail.integration.airflow.hooks import ChromaHook, LedgerHook, VectorStoreHook
from embedrail.integration.airflow.tasks import (
    EmbedrailReindexOperator,
    ReindexJob,
    cached_embedder,
)

__all__ = [
    "CONN_PREFIX",
    "ChromaHook",
    "LedgerHook",
    "VectorStoreHook",
    "EmbedrailReindexOperator",
    "ReindexJob",
    "TargetSpec",
    "build_dags_from_folder",
    "build_reindex_dag",
    "cached_embedder",
    "connection_to_url",
    "expand_env",
    "index_asset",
    "load_dag_config",
    "reindex_tasks",
    "resolve_ledger",
    "resolve_target",
    "with_index",
]
