"""The sync ledger's tables (SQLAlchemy Core), apart from the code that reads and writes them
(:mod:`integration.ledger`, whose module doc says what each table records and when it is written).

Changing a column here changes the schema of every existing ledger: ``Ledger`` creates missing tables
but never migrates existing ones.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Text

__all__ = ["chunks_t", "docs_t", "leases_t", "meta_t", "metadata", "targets_t", "watermarks_t"]

metadata = MetaData()
targets_t = Table(
    "er_targets",
    metadata,
    Column("target", String(512), primary_key=True),
    Column("generation", String(512), nullable=False, default=""),
    Column("fingerprint", String(128), nullable=False, default=""),
    Column("spec", Text, nullable=False, default="{}"),
    Column("pending_generation", String(512), nullable=True),
    Column("pending_fingerprint", Text, nullable=True),
    Column("updated_at", Integer, nullable=False, default=0),
)
docs_t = Table(
    "er_docs",
    metadata,
    Column("target", String(512), primary_key=True),
    Column("generation", String(512), primary_key=True),
    Column("doc_id", String(1024), primary_key=True),
    Column("doc_hash", String(64), nullable=False),
    Column("n_chunks", Integer, nullable=False),
)
chunks_t = Table(
    "er_chunks",
    metadata,
    Column("target", String(512), primary_key=True),
    Column("generation", String(512), primary_key=True),
    Column("chunk_id", String(1100), primary_key=True),
    Column("doc_id", String(1024), nullable=False),
    Column("fingerprint", String(64), nullable=True),
    Index("er_chunks_doc", "target", "generation", "doc_id"),
)
watermarks_t = Table(
    "er_watermarks",
    metadata,
    Column("target", String(512), primary_key=True),
    Column("source", String(1024), primary_key=True),
    Column("value", Text, nullable=True),
)
leases_t = Table(
    "er_leases",
    metadata,
    Column("target", String(512), primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("owner", String(512), nullable=False),
    Column("started_at", Integer, nullable=False),
    Column("expires_at", Integer, nullable=False),
)
meta_t = Table(
    "er_meta",
    metadata,
    Column("key", String(512), primary_key=True),
    Column("value", Text, nullable=False),
)
