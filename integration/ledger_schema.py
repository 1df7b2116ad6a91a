"""The sync ledger's tables (SQLAlchemy Core), apart from the code that reads and writes them
(:mod:`integration.ledger`, whose module doc says what each table records and when it is written).

Changing a column here changes the schema of every existing ledger: ``Ledger`` creates missing tables,
and adds the nullable columns listed in ``ADDED_COLUMNS`` to tables made by an older version (``migrate``);
nothing else is migrated.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Text, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

__all__ = ["ADDED_COLUMNS", "bad_t", "chunks_t", "docs_t", "leases_t", "meta_t", "metadata", "migrate", "targets_t", "watermarks_t"]

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
    # the listing token (ETag / mtime + size, parser) the document was last read at, under this target's
    # configuration: equal => a file source does not fetch the file again (added in 0.3: see ``migrate``)
    Column("version", String(64), nullable=True),
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
bad_t = Table(
    "er_bad",
    metadata,
    # a listed file that could not be parsed, at the listing version it had: not read again until that changes
    Column("target", String(512), primary_key=True),
    Column("generation", String(512), primary_key=True),
    Column("doc_id", String(1024), primary_key=True),
    Column("version", String(64), nullable=False),
    Column("reason", Text, nullable=False),
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

#: (table, column) added after the first release: nullable, so an ALTER TABLE ... ADD COLUMN is enough
ADDED_COLUMNS = (("er_docs", "version"),)


def migrate(engine: Engine) -> None:
    """Add the columns of ``ADDED_COLUMNS`` that an older ledger lacks. Two processes may race: the loser's
    ALTER fails and it checks again."""
    for table, column in ADDED_COLUMNS:
        for attempt in range(3):
            have = {c["name"] for c in inspect(engine).get_columns(table)}
            if column in have:
                break
            col = metadata.tables[table].c[column]
            ddl = f"ALTER TABLE {table} ADD COLUMN {column} {col.type.compile(dialect=engine.dialect)}"
            try:
                with engine.begin() as conn:
                    conn.execute(text(ddl))
                break
            except DBAPIError:
                if attempt == 2:
                    raise
