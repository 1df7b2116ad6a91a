"""embedrail: keep vector databases in step with source data.

```python
from embedrail import sync, connect, open_embedder

report = sync("docs.jsonl", ["chroma:///data/chroma?collection=docs"], ledger="sqlite:////data/embedrail/ledger.sqlite")
with connect("chroma:///data/chroma?collection=docs") as store, open_embedder("minilm") as emb:
    hits = store.search(emb.embed_query("how do I rotate the logs"), k=5)
```

One import name, four layers below it: ``embedrail.embed_core`` (the models), ``embedrail.connectors``
(one module per vector store), ``embedrail.integration`` (sources, chunking, the ledger, the sync engine,
the query side, the CLI) and ``embedrail.airflow`` (the Airflow API). ``embedrail.errors`` is the one
error hierarchy they share. The names below are imported on first use: ``import embedrail`` loads no
model, no store client and no Airflow.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

#: the face of the package: name -> the module it lives in (imported on first use)
_LAZY = {
    "sync": "embedrail.integration.engine",
    "SyncEngine": "embedrail.integration.engine",
    "SyncOptions": "embedrail.integration.options",
    "Target": "embedrail.integration.targets",
    "Report": "embedrail.integration.report",
    "Ledger": "embedrail.integration.ledger",
    "Searcher": "embedrail.integration.search",
    "open_source": "embedrail.integration.sources",
    "connect": "embedrail.connectors",
    "open_embedder": "embedrail.embed_core.factory",
    "open_reranker": "embedrail.embed_core.rerank",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'embedrail' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once is enough
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
