"""The sync ledger's tables (SQLAlchemy Core), apart from the code that reads and writes them
(:mod:`integration.ledger`, whose module doc says what each table records and when it is written).

Changing a column here changes the schema of every existing ledger: ``Ledger`` creates missing tables,
and adds the nullable columns listed in ``ADDED_COLUMNS`` to tables made by an older version (``migrate``);
nothing else is migrated.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    inspect,
    literal_column,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from embedrail.integration.plan import TEXT_FP

__all__ = ["ADDED_COLUMNS", "ADDED_INDEXES", "bad_t", "chunks_by_text", "chunks_t", "chunks_text_part", "docs_t", "leases_t", "meta_t", "metadata", "migrate", "targets_t", "watermarks_t"]

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
#: a chunk row by the text part of its fingerprint (``plan.TEXT_FP`` characters: what its vector depends on), so a
#: chunk of the same text under another id (a renamed or moved document) finds the record whose vector it can take.
#: The expression is spelt with literals, so that a query written the same way matches it on every database.
chunks_text_part = func.substr(chunks_t.c.fingerprint, literal_column("1"), literal_column(str(TEXT_FP)))
chunks_by_text = Index("er_chunks_text", chunks_t.c.target, chunks_t.c.generation, chunks_text_part)
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
#: indexes added after the first release (made on an existing table, once: on a large ledger this takes a while)
ADDED_INDEXES = (chunks_by_text,)


def migrate(engine: Engine) -> None:
    """Add the columns of ``ADDED_COLUMNS`` and the indexes of ``ADDED_INDEXES`` that an older ledger lacks. Two
    processes may race: the loser's ALTER or CREATE fails and it checks again."""
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
    for index in ADDED_INDEXES:
        for attempt in range(3):
            if _has_index(engine, str(index.name)):
                break
            try:
                index.create(engine)
                break
            except DBAPIError:
                if attempt == 2:
                    raise


def _has_index(engine: Engine, name: str) -> bool:
    """Whether the index exists (read from the catalogue: SQLAlchemy does not reflect expression indexes). On a
    database other than SQLite and PostgreSQL it counts as made: the queries work without it, more slowly."""
    dialect = engine.dialect.name
    if dialect == "sqlite":
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = :name"
    elif dialect == "postgresql":
        sql = "SELECT 1 FROM pg_indexes WHERE schemaname = current_schema() AND indexname = :name"
    else:
        return True
    with engine.connect() as conn:
        return conn.execute(text(sql), {"name": name}).first() is not None
