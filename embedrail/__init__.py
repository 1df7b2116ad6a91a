"""embedrail: keep vector databases in step with source data.

This tiny package holds only what every layer shares and nothing else: the version and the
error hierarchy (``embedrail.errors``). It imports nothing from the layers, so ``embed_core``
and ``connectors`` can both depend on it without depending on each other.
"""

__version__ = "0.1.0"
