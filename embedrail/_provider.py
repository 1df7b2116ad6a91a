"""embedrail as an Airflow provider: what the ``apache_airflow_provider`` entry point returns, so that
Airflow's providers manager lists embedrail's hooks and offers its connection types, with their form
fields, in the UI. Imports nothing: Airflow reads it while it starts."""

from __future__ import annotations

from typing import Any

from embedrail import __version__

_HOOKS = "embedrail.integration.airflow.hooks"


def _field(label: str, kind: str = "string", *, secret: bool = False, default: Any = None, description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": [kind, "null"]}
    if secret:
        schema["format"] = "password"
    if default is not None:
        schema["default"] = default
    return {"label": label, "schema": schema, **({"description": description} if description else {})}


def get_provider_info() -> dict[str, Any]:
    index = _field("Index / collection / table", description="default index of this connection (a target may name its own)")
    return {
        "package-name": "embedrail",
        "name": "embedrail",
        "description": "Keep vector databases in step with source data: reindex DAGs, hooks for the stores and the sync ledger.",
        "versions": [__version__],
        "integrations": [{"integration-name": "embedrail", "external-doc-url": "https://pypi.org/project/embedrail/",
                          "tags": ["software"]}],  # fmt: skip
        "hooks": [{"integration-name": "embedrail", "python-modules": [_HOOKS]}],
        "connection-types": [
            {
                "connection-type": "embedrail_chroma",
                "hook-class-name": f"{_HOOKS}.ChromaHook",
                "hook-name": "Chroma (embedrail)",
                "ui-field-behaviour": {
                    "hidden-fields": ["login"],
                    "relabeling": {"password": "Token", "schema": "Scheme (http / https)"},
                    "placeholders": {"host": "chroma.example.com", "port": "8000"},
                },
                "conn-fields": {
                    "path": _field("Embedded database directory", description="an embedded Chroma on the worker's disk "
                                   "(then host and port are not used)"),  # fmt: skip
                    "collection": _field("Collection"),
                    "tenant": _field("Tenant"),
                    "database": _field("Database"),
                    "token_header": _field("Token header", description="Authorization (Bearer) or X-Chroma-Token"),
                },
            },
            {
                "connection-type": "embedrail_store",
                "hook-class-name": f"{_HOOKS}.VectorStoreHook",
                "hook-name": "Vector store (embedrail)",
                "ui-field-behaviour": {
                    "relabeling": {"schema": "Scheme (http / https) or database"},
                    "placeholders": {"host": "localhost"},
                },
                "conn-fields": {
                    "store": _field("Store", description="es, opensearch, weaviate, qdrant, chroma or pgvector"),
                    "index": index,
                    "api_key": _field("API key", secret=True),
                },
            },
            {
                "connection-type": "embedrail_ledger",
                "hook-class-name": f"{_HOOKS}.LedgerHook",
                "hook-name": "Sync ledger (embedrail)",
                "ui-field-behaviour": {
                    "relabeling": {"schema": "Database"},
                    "placeholders": {"host": "postgres.example.com", "port": "5432"},
                },
                "conn-fields": {
                    "sqlalchemy_scheme": _field("SQLAlchemy driver", default="postgresql+psycopg",
                                                description="postgresql+psycopg (default), mysql+pymysql, ..."),  # fmt: skip
                    "path": _field("SQLite file", description="a SQLite ledger on the worker's disk (one machine only)"),
                },
            },
        ],
    }
