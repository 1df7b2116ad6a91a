"""integration: the ETL side of embedrail — sources, chunking, the sync ledger, the sync engine, the CLI.

```python
from embedrail.integration import SyncEngine, sync
report = sync("docs.jsonl", ["chroma:///abs/path?collection=docs"], ledger="sqlite:////abs/path/ledger.sqlite")
print(report.to_dict())
```

Importing this package loads no model and touches no network; Airflow is imported only by
``integration.airflow``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Chunk",
    "Chunker",
    "Document",
    "Ledger",
    "Report",
    "RunContext",
    "SyncEngine",
    "SyncOptions",
    "Target",
    "open_source",
    "partition_of",
    "sync",
]

_LAZY = {
    "Chunk": "embedrail.integration.documents",
    "Document": "embedrail.integration.documents",
    "partition_of": "embedrail.integration.documents",
    "Chunker": "embedrail.integration.chunking",
    "Ledger": "embedrail.integration.ledger",
    "Report": "embedrail.integration.report",
    "RunContext": "embedrail.integration.context",
    "SyncEngine": "embedrail.integration.engine",
    "SyncOptions": "embedrail.integration.options",
    "sync": "embedrail.integration.engine",
    "Target": "embedrail.integration.targets",
    "open_source": "embedrail.integration.sources",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod), name)
