"""The Airflow API of embedrail (the ``airflow`` extra): DAGs from YAML or Python, the reindex tasks for a
DAG of your own, the operator, the hook, and the connection helpers.

```python
from embedrail.airflow import build_reindex_dag, reindex_tasks, EmbedrailReindexOperator
```

Everything here is ``embedrail.integration.airflow``'s; importing this module imports Airflow.
"""

from __future__ import annotations

from embedrail.integration.airflow import *  # noqa: F403 - the re-export is the point
from embedrail.integration.airflow import __all__  # noqa: F401
