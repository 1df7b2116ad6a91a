"""PostgreSQL + pgvector connector (psycopg 3 and the ``pgvector`` package: ``pip install 'embedrail[pgvector]'``).

``pgvector://user:pass@host:5432/dbname?table=docs`` (also ``postgresql://`` / ``postgres://``;
``?sslmode=require``, ``?schema=``), or ``PgvectorStore(psycopg_connection, table="docs")`` with a
connection you already have (autocommit; never closed by us).

- One table per physical index: ``id text primary key, embedding vector(d) | halfvec(d), text,
  metadata jsonb``, an HNSW index (``m``, ``ef_construction`` explicit; operator class from the metric:
  ``vector_cosine_ops`` / ``vector_ip_ops`` / ``vector_l2_ops``, or the ``halfvec_*`` ones) and a GIN
  index on the metadata. The ``IndexSpec`` is the table's comment (JSON).
- Dimensions: pgvector indexes ``vector`` up to 2,000 dims and ``halfvec`` (16-bit floats) up to 4,000
  (pgvector >= 0.7). Up to 2,000 dims the table uses ``vector``; 2,001-4,000 use ``halfvec`` (so a
  Qwen3-4B's 2,560 fit); more (Qwen3-8B's 4,096) is refused with ``DimensionLimitError`` naming the way
  out: a lower ``dims`` on an MRL model. ``max_dims()`` says which applies to the server.
- Writes: ``INSERT ... ON CONFLICT (id) DO UPDATE`` per batch, in one transaction (a batch the server
  refuses is bisected so one bad record — e.g. a NUL character in its text — fails alone).
- Filters run on the JSONB metadata (containment for equality, typed comparisons for ranges) with
  pgvector's iterative HNSW scan (``hnsw.iterative_scan = relaxed_order``, pgvector >= 0.8), so a
  selective filter still returns ``k`` hits; hits are re-sorted by score.
- Quantisation (``quantization=`` / ``?quantization=``, recorded in the table's comment, so reads follow
  the table whatever the store was opened with): ``None`` (``vector``, or ``halfvec`` above 2,000 dims);
  ``"halfvec"`` (16-bit floats in the column and the HNSW graph: half the bytes); ``"bit"`` (the HNSW index
  on ``binary_quantize(embedding)::bit(d)``, one bit per dimension, Hamming distance; the float column
  stays, and the ``rescore`` x k nearest by Hamming distance are re-ranked by the exact distance, as
  pgvector's documentation shows). ``embedrail eval --reference`` measures what each loses against float.
- Rebuilds: the name is a pointer in a small table (``embedrail_aliases``: name -> physical table) and a
  view of that name for SQL readers; a switch updates both in one transaction (PostgreSQL DDL is
  transactional), so readers see the complete old or the complete new table. A rebuild's table is
  loaded without its HNSW index, which ``commit_rebuild`` builds over the loaded rows before the switch
  (pgvector builds an index over existing rows several times faster than it inserts rows into one;
  ``maintenance_work_mem=`` sets the memory that build may use, see the README).
- The sync ledger may live in the same database (its tables are ``er_*``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from embedrail.connectors._filters import Cond, parse_filter
from embedrail.connectors._records import batched, owner_from, search_from, spec_from_dict, spec_to_dict
from embedrail.connectors._retry import BASE_ERRORS, ErrorKind, sqlstate_kind
from embedrail.connectors._sparse import check_learned, learned_encoder
from embedrail.connectors._store import BaseStore, Batch, ReadTarget, _Unencodable
from embedrail.connectors._urls import StoreURL
from embedrail.connectors.base import (
    DEFAULT_ALPHA,
    DEFAULT_FUSION,
    NOT_STORED,
    Hit,
    IndexInfo,
    IndexSpec,
    Record,
    UpsertResult,
)
from embedrail.errors import ConfigError, DimensionLimitError, StoreRejectedError, UnsupportedError

__all__ = ["PgvectorStore"]

log = logging.getLogger(__name__)

REGISTRY = "embedrail_aliases"
VECTOR_MAX, HALFVEC_MAX = 2000, 4000  # pgvector's HNSW limits (vector, halfvec)
COLUMN_MAX = 16000  # a vector column without an HNSW index on it (binary quantisation indexes bits)
QUANTIZATIONS = (None, "halfvec", "bit")
_OPS = {"cosine": ("cosine", "<=>"), "dot": ("ip", "<#>"), "l2": ("l2", "<->")}
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")  # + "__v<21>" stays inside PostgreSQL's 63-byte identifiers
_MEMORY_RE = re.compile(r"^\d+\s*(kB|MB|GB|TB)?$")


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


class PgvectorStore(BaseStore):
    """A PostgreSQL table with a pgvector column behind the ``VectorStore`` protocol (see the module doc)."""

    STORE = "pgvector"
    NAME_HINT = "pgvector://user:pass@host:5432/db?table=NAME"
    # errors without a SQLSTATE: the connection failed, was lost or closed under us; or a value the driver refused
    ERRORS = BASE_ERRORS.extend(transient=("psycopg.OperationalError", "psycopg.InterfaceError"),
                                rejected=("psycopg.DataError",))  # a value the driver cannot send (a NUL in text)

    def __init__(self, client_or_url: Any, table: str | None = None, *, m: int = 16, ef_construction: int = 64,
                 ef_search: int = 100, batch_size: int = 500, schema: str | None = None, text_config: str | None = None,
                 maintenance_work_mem: str | None = None, quantization: str | None = None, rescore: int = 4,
                 sparse_encoder: Any = None, **base: Any) -> None:  # fmt: skip
        super().__init__(client_or_url, table, **base)
        q = (self._u.param("quantization") if self._u else None) or quantization
        q = None if q in ("", "none", "float", None) else q
        if q not in QUANTIZATIONS:
            raise ConfigError(f"unknown quantization {q!r}; use none, halfvec or bit")
        self.quantization = q
        self.rescore = max(1, int((self._u.param("rescore") if self._u else None) or rescore))
        self._quant: dict[str, str | None] = {}
        self.m, self.ef_construction, self.ef_search, self.batch_size = int(m), int(ef_construction), int(ef_search), int(batch_size)
        self.schema = schema or (self._u.param("schema") if self._u else None) or "public"
        # memory for building a rebuild's HNSW index (None: the server's setting); pgvector builds much
        # faster while the graph fits in it
        memory = maintenance_work_mem or (self._u.param("maintenance_work_mem") if self._u else None)
        if memory is not None and not _MEMORY_RE.match(str(memory)):
            raise ConfigError(f"maintenance_work_mem={memory!r}: expected a PostgreSQL memory size such as '2GB' or '512MB'")
        self.maintenance_work_mem = memory
        self._lock = threading.RLock()
        self._version: tuple[int, ...] | None = None
        # the full-text search configuration of a new table's keyword search (None: english); a table
        # keeps the one it was created with (its comment)
        self.text_config = text_config or (self._u.param("text_config") if self._u else None)
        self._lexical: dict[str, dict[str, Any]] = {}
        self._stats: dict[str, tuple[float, tuple[dict[str, float], float, float] | None]] = {}  # see _term_stats
        # learned sparse vectors (a SPLADE model, embed_core.sparse): new tables get a sparsevec column
        self.sparse_encoder = learned_encoder(sparse_encoder) if sparse_encoder is not None else None
        self._sparse: dict[str, tuple[Any, int] | None] = {}  # table -> (its encoder, its vocabulary size)

    # ------------------------------------------------------------------------------ names, client
    def _name_from_url(self, u: StoreURL) -> str | None:
        return u.param("table")

    def _url_with_name(self, u: StoreURL, name: str) -> str:
        return replace(u, params={**u.params, "table": name}).safe

    def _check_name(self, name: str) -> str:
        if not _NAME_RE.match(name):
            raise ConfigError(f"invalid pgvector table name {name!r}: 1-40 characters [a-z0-9_], starting with a letter "
                              "or _ (the physical tables behind it add a 23-character version suffix)")  # fmt: skip
        return name

    @staticmethod
    def _describe_client(client: Any, name: str | None) -> str:
        try:
            info = client.info
            return f"pgvector://{info.host}:{info.port}/{info.dbname}?table={name or ''}"
        except Exception:  # noqa: BLE001 - for messages only
            return f"pgvector+client://?table={name or ''}"

    def _make_client(self) -> Any:
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - depends on the installed extras
            raise ConfigError("the pgvector connector needs psycopg and pgvector: pip install 'embedrail[pgvector]'") from e
        u: StoreURL = self._u  # type: ignore[assignment]
        kw: dict[str, Any] = {"host": u.host or "localhost", "port": u.port or 5432, "dbname": u.path.strip("/") or "postgres",
                              "user": u.username, "password": u.password, "autocommit": True,
                              "connect_timeout": int(u.param("connect_timeout") or 10)}  # fmt: skip
        if u.param("sslmode"):
            kw["sslmode"] = u.param("sslmode")
        return psycopg.connect(**{k: v for k, v in kw.items() if v is not None})

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._call(self._make_client, "connect")
        if not getattr(self, "_registered", False):
            self._setup(self._client)
        return self._client

    def _setup(self, conn: Any) -> None:
        """The extension (created if this user may), the vector types' adapters, the pointer table."""
        from pgvector.psycopg import register_vector

        with self._lock:
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            if row is None:
                try:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                except Exception as e:  # noqa: BLE001
                    raise ConfigError(f"{self.url}: the pgvector extension is not installed in this database and "
                                      f"could not be created ({type(e).__name__}: {e}); run CREATE EXTENSION vector "
                                      "as a superuser") from None  # fmt: skip
                row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            self._version = tuple(int(x) for x in re.findall(r"\d+", row[0])[:3])
            register_vector(conn)
            conn.execute(f"CREATE TABLE IF NOT EXISTS {_q(self.schema)}.{REGISTRY} (name text PRIMARY KEY, target text NOT NULL, "
                         "updated timestamptz NOT NULL DEFAULT now())")  # fmt: skip
            self._registered = True

    def _close_client(self, client: Any) -> None:
        client.close()

    def _classify(self, e: BaseException) -> ErrorKind:
        """A server error by its SQLSTATE (``connectors._retry.SQLSTATE_KINDS``); a lost or refused
        connection (no SQLSTATE) by the table."""
        state = getattr(e, "sqlstate", None)
        if isinstance(state, str) and state:
            return sqlstate_kind(state)
        return super()._classify(e)

    @staticmethod
    def _is_not_found(e: BaseException) -> bool:
        try:
            import psycopg
        except ImportError:  # pragma: no cover
            return False
        return isinstance(e, psycopg.errors.UndefinedTable)

    def _sql(self, sql: str, params: Any = None, what: str = "query", many: bool = False) -> list[tuple]:
        """Run one statement (``many``: executemany in one transaction); rows of a SELECT."""

        def run() -> list[tuple]:
            conn = self.client
            with self._lock:
                if many:
                    with conn.transaction(), conn.cursor() as cur:
                        cur.executemany(sql, params)
                    return []
                cur = conn.execute(sql, params)
                return cur.fetchall() if cur.description else []

        return self._call(run, what)

    def _tx(self, fn: Any, what: str) -> Any:
        """``fn(conn)`` inside one transaction."""

        def run() -> Any:
            conn = self.client
            with self._lock, conn.transaction():
                return fn(conn)

        return self._call(run, what)

    def _t(self, physical: str) -> str:
        return f"{_q(self.schema)}.{_q(physical)}"

    def pgvector_version(self) -> tuple[int, ...]:
        _ = self.client
        assert self._version is not None
        return self._version

    def max_dims(self) -> int | None:
        if self.quantization == "bit":
            return COLUMN_MAX
        return HALFVEC_MAX if self.pgvector_version() >= (0, 7) else VECTOR_MAX

    def _quant_of(self, physical: str) -> str | None:
        """The quantisation the table records (its comment); None: float vectors."""
        if physical not in self._quant:
            self._quant[physical] = self._comment(physical).get("quantization")
        return self._quant[physical]

    def _sparse_of(self, physical: str) -> tuple[Any, int] | None:
        """(the learned sparse encoder, the sparsevec's dims) of a table with a ``sparse`` column; None."""
        if physical not in self._sparse:
            ident = self._comment(physical).get("sparse")
            self._sparse[physical] = ((check_learned(self.url, self.sparse_encoder, ident), int(ident["dims"]))
                                      if isinstance(ident, dict) else None)  # fmt: skip
        return self._sparse[physical]

    def sparse_identity(self) -> dict[str, Any] | None:
        """The learned sparse encoder the current table records (None: no table, or no sparse column)."""
        physical = self._current_physical()
        ident = self._comment(physical).get("sparse") if physical is not None else None
        return dict(ident) if isinstance(ident, dict) else None

    def use_sparse_encoder(self, encoder: Any) -> None:
        """Use this learned sparse encoder from now on (what ``Searcher`` does with the recorded model)."""
        self.sparse_encoder = learned_encoder(encoder)
        self._sparse.clear()

    def _lexical_of(self, physical: str) -> dict[str, Any]:
        """How the table's keyword search works: ``{"config": ..., "column": "lex"}`` for a table with the
        ``lex`` column, ``{"config": ...}`` for one created before it (an expression index on ``text``)."""
        if physical not in self._lexical:
            lex = self._comment(physical).get("lexical")
            self._lexical[physical] = dict(lex) if isinstance(lex, dict) else {"config": self.text_config or "simple"}
        return self._lexical[physical]

    # ------------------------------------------------------------------------------ names -> tables
    def _exists(self, physical: str) -> bool:
        rows = self._sql("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                         "WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r'", (self.schema, physical), "lookup")  # fmt: skip
        return bool(rows)

    def _pointer(self) -> str | None:
        rows = self._sql(f"SELECT target FROM {_q(self.schema)}.{REGISTRY} WHERE name = %s", (self.name,), "resolve alias")
        return str(rows[0][0]) if rows else None

    def _comment(self, physical: str) -> dict[str, Any]:
        """The JSON of the table's comment (embedrail's spec, logical name and owner); {} if none."""
        rows = self._sql("SELECT obj_description(%s::regclass, 'pg_class')", (self._t(physical),), "read spec")
        raw = rows[0][0] if rows else None
        try:
            d = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return d if isinstance(d, dict) else {}

    def _spec_of(self, physical: str) -> IndexSpec | None:
        return spec_from_dict(self._comment(physical).get("embedrail"))

    def _set_meta(self, physical: str, key: str, value: Any) -> None:
        comment = {**self._comment(physical), key: value}
        if value is None:
            comment.pop(key)
        self._sql(f"COMMENT ON TABLE {self._t(physical)} IS {_literal(json.dumps(comment, sort_keys=True))}", what=f"record {key}")

    def _vtype(self, physical: str) -> str:
        rows = self._sql("SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a WHERE a.attrelid = %s::regclass "
                         "AND a.attname = 'embedding'", (self._t(physical),), "read column type")  # fmt: skip
        return str(rows[0][0]).split("(")[0] if rows else "vector"

    def _handle(self, physical: str) -> Any:
        return self._vtype(physical)

    # ------------------------------------------------------------------------------ creation
    def _column_type(self, dims: int, quantization: str | None = None) -> str:
        if quantization == "bit" and dims <= COLUMN_MAX:
            return "vector"  # the graph indexes the bits; the floats stay for rescoring
        if quantization == "halfvec" and dims <= (self.max_dims() or VECTOR_MAX):
            return "halfvec"
        if dims <= VECTOR_MAX:
            return "vector"
        limit = self.max_dims() or VECTOR_MAX
        if dims <= limit:
            return "halfvec"
        raise DimensionLimitError(
            f"{self.url}: pgvector indexes at most {limit} dims ({'halfvec' if limit > VECTOR_MAX else 'vector'}; pgvector "
            f"{'.'.join(map(str, self.pgvector_version()))}), {dims} requested; nothing was written. Use a lower dims "
            f"(an MRL model such as Qwen3-Embedding keeps its quality at e.g. --dims {min(limit, 2048)})"
        )

    def _create_physical(self, physical: str, spec: IndexSpec) -> None:
        vtype = self._column_type(spec.dims, self.quantization)
        lexical = {"config": self.text_config or "english", "column": "lex", "headings": list(HEADING_KEYS)}
        sparse_col, sparse = "", None
        if self.sparse_encoder is not None:
            if self.pgvector_version() < (0, 7):
                raise ConfigError(f"{self.url}: learned sparse vectors need pgvector >= 0.7 (sparsevec); the server has "
                                  f"{'.'.join(map(str, self.pgvector_version()))}")  # fmt: skip
            vocab = int(getattr(self.sparse_encoder, "vocab_size", 0) or 0)
            if vocab < 1:
                raise ConfigError("the sparse encoder must say its vocab_size (the sparsevec column's dims)")
            sparse, sparse_col = {**self.sparse_encoder.identity, "dims": vocab}, f", sparse sparsevec({vocab})"
        comment = json.dumps({"embedrail": spec_to_dict(spec), "logical": self.name, "lexical": lexical,
                              **({"quantization": self.quantization} if self.quantization else {}),
                              **({"sparse": sparse} if sparse else {})}, sort_keys=True)  # fmt: skip
        self._quant.pop(physical, None)
        self._lexical.pop(physical, None)
        self._stats.pop(physical, None)
        self._sparse.pop(physical, None)
        # a rebuild's table (this store is bound to it) is loaded first and gets its HNSW index at commit
        # (_finish_physical): inserting row by row into an HNSW index is several times slower than one build
        defer = self._physical_fixed == physical

        def create(conn: Any) -> None:
            t = self._t(physical)
            conn.execute(f"CREATE TABLE {t} (id text PRIMARY KEY, embedding {vtype}({int(spec.dims)}) NOT NULL, "
                         "text text NOT NULL DEFAULT '', metadata jsonb NOT NULL DEFAULT '{}', "
                         f"lex tsvector GENERATED ALWAYS AS ({_lex_expr(lexical['config'])}) STORED{sparse_col})")  # fmt: skip
            # unnamed indexes: PostgreSQL picks unique names (physical + a suffix would pass 63 bytes)
            if not defer:
                conn.execute(self._hnsw_sql(physical, spec, self.quantization))
            conn.execute(f"CREATE INDEX ON {t} USING gin (metadata jsonb_path_ops)")
            conn.execute(f"CREATE INDEX ON {t} USING gin (lex)")
            conn.execute(f"COMMENT ON TABLE {t} IS {_literal(comment)}")

        self._tx(create, "create table")

    def _hnsw_sql(self, physical: str, spec: IndexSpec, quantization: str | None) -> str:
        if quantization == "bit":
            column, ops = f"(binary_quantize(embedding)::bit({int(spec.dims)}))", "bit_hamming_ops"
        else:
            column, ops = "embedding", f"{self._column_type(spec.dims, quantization)}_{_OPS[spec.metric][0]}_ops"
        return f"CREATE INDEX ON {self._t(physical)} USING hnsw ({column} {ops}) WITH (m = {self.m}, ef_construction = {self.ef_construction})"

    def has_vector_index(self, physical: str | None = None) -> bool:
        """Whether ``physical`` (default: the table this store reads) has its HNSW index (a rebuild's
        table gets it at ``commit_rebuild``)."""
        rows = self._sql("SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                         "WHERE i.indrelid = %s::regclass AND a.amname = 'hnsw'",
                         (self._t(physical or self.resolve() or self.name),), "read indexes")  # fmt: skip
        return bool(rows)

    def _finish_physical(self, physical: str) -> None:
        """Build the HNSW index of a loaded rebuild table (once: a commit retried after a crash finds it).
        One transaction: a build that dies leaves no half index, and the next commit builds it again."""
        if self.has_vector_index(physical):
            return
        spec = self._spec_of(physical)
        if spec is None:
            raise ConfigError(f"{self.url}: {physical!r} records no embedrail spec; cannot index it")

        def build(conn: Any) -> None:
            if self.maintenance_work_mem:
                conn.execute(f"SET LOCAL maintenance_work_mem = {_literal(str(self.maintenance_work_mem))}")
            conn.execute(self._hnsw_sql(physical, spec, self._quant_of(physical)))

        log.info("%s: building the HNSW index of %s", self.url, physical)
        self._tx(build, "build vector index")

    def _create_named(self, spec: IndexSpec) -> str:
        physical = self._new_physical_name()
        self._create_physical(physical, spec)

        def point(conn: Any) -> str:
            row = conn.execute(f"INSERT INTO {_q(self.schema)}.{REGISTRY} (name, target) VALUES (%s, %s) "
                               "ON CONFLICT (name) DO NOTHING RETURNING target", (self.name, physical)).fetchone()  # fmt: skip
            if row is None:  # another process created the index concurrently: theirs wins
                return str(conn.execute(f"SELECT target FROM {_q(self.schema)}.{REGISTRY} WHERE name = %s", (self.name,)).fetchone()[0])
            self._replace_view(conn, physical)
            return physical

        winner = self._tx(point, "write alias")
        if winner != physical:
            self._drop_physical(physical)
        return winner

    def _replace_view(self, conn: Any, physical: str) -> None:
        """The view named like the index, for SQL readers (skipped if a table of that name exists)."""
        kind = conn.execute("SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = %s AND c.relname = %s", (self.schema, self.name)).fetchone()  # fmt: skip
        if kind is not None and kind[0] != "v":
            return
        conn.execute(f"DROP VIEW IF EXISTS {self._t(self.name)}")
        conn.execute(f"CREATE VIEW {self._t(self.name)} AS SELECT id, embedding, text, metadata FROM {self._t(physical)}")

    def describe(self) -> IndexInfo:
        extra: dict[str, Any] = {"store": "pgvector", "pgvector": ".".join(map(str, self.pgvector_version())), "max_dims": self.max_dims()}
        physical = self._current_physical()
        if physical is None:
            return IndexInfo(name=self.name, exists=False, extra=extra)
        comment = self._comment(physical)
        vtype, quant, spec = self._vtype(physical), comment.get("quantization"), spec_from_dict(comment.get("embedrail"))
        extra.update(vector_type=vtype, quantization=quant, url=self.url, lexical=self._lexical_of(physical),
                     sparse=comment.get("sparse"))
        if spec is not None:  # what the HNSW graph holds per vector (a bit index re-ranks with the float column)
            extra["bytes_per_vector"] = -(-spec.dims // 8) if quant == "bit" else spec.dims * (2 if vtype == "halfvec" else 4)
        return IndexInfo(name=self.name, exists=True, physical_name=physical, spec=spec_from_dict(comment.get("embedrail")),
                         count=self._count(physical), extra=extra, owner=owner_from(comment.get("owner")),
                         search=search_from(comment.get("search")))  # fmt: skip

    # ------------------------------------------------------------------------------ writing
    def _batch_size(self) -> int:
        return self.batch_size

    def _encode(self, target: ReadTarget, record: Record, vector: np.ndarray) -> Any:
        return vector.astype(np.float32, copy=False), record.text or "", json.dumps(record.metadata or {}, allow_nan=False)

    def _encode_all(self, target: ReadTarget, items: list[tuple[Record, np.ndarray]]) -> list[Any]:
        out = super()._encode_all(target, items)
        sparse = self._sparse_of(target.physical)
        if sparse is None:
            return out
        enc, dims = sparse
        vecs = enc.documents([r.text or "" for r, _ in items])  # the model: one batched call
        return [o if isinstance(o, _Unencodable) else (*o, _sparsevec(idx, vals, dims)) for o, (idx, vals) in zip(out, vecs, strict=True)]

    def _write_batch(self, target: ReadTarget, batch: Batch) -> dict[str, str]:
        t, vtype = self._t(target.physical), target.handle or "vector"
        if batch and len(batch[0][1]) == 4:  # a table with learned sparse vectors
            sql = (f"INSERT INTO {t} (id, embedding, text, metadata, sparse) VALUES (%s, %s::{vtype}, %s, %s::jsonb, %s::sparsevec) "
                   "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, text = EXCLUDED.text, "
                   "metadata = EXCLUDED.metadata, sparse = EXCLUDED.sparse")  # fmt: skip
            self._sql(sql, [(i, *row) for i, row in batch], "upsert", many=True)
            return {}
        sql = (f"INSERT INTO {t} (id, embedding, text, metadata) VALUES (%s, %s::{vtype}, %s, %s::jsonb) ON CONFLICT (id) "
               "DO UPDATE SET embedding = EXCLUDED.embedding, text = EXCLUDED.text, metadata = EXCLUDED.metadata")  # fmt: skip
        self._sql(sql, [(i, v, txt, md) for i, (v, txt, md) in batch], "upsert", many=True)
        return {}

    def _update_batch(self, target: ReadTarget, part: list[tuple[str, dict[str, Any]]], result: UpsertResult) -> None:
        """Native: the metadata column alone (the vector and the HNSW graph are untouched)."""
        rows = []
        for i, md in part:
            try:
                rows.append((json.dumps(md, allow_nan=False), i))
            except (TypeError, ValueError) as e:
                result.failed[i] = f"metadata is not JSON-serialisable: {e}"
        t = self._t(target.physical)
        held = {r[0] for r in self._sql(f"SELECT id FROM {t} WHERE id = ANY(%s)", ([i for _, i in rows],), "read ids")}
        for _, i in rows:
            if i not in held:
                result.failed[i] = NOT_STORED
        todo = [(md, i) for md, i in rows if i in held]
        if todo:
            self._sql(f"UPDATE {t} SET metadata = %s::jsonb WHERE id = %s", todo, "update metadata", many=True)
            result.written += len(todo)

    def _stored(self, target: ReadTarget, ids: list[str]) -> dict[str, tuple[np.ndarray, str, dict[str, Any]]]:
        rows = self._sql(f"SELECT id, embedding::vector, text, metadata FROM {self._t(target.physical)} WHERE id = ANY(%s)", (ids,),
                         "read back")  # fmt: skip
        # pgvector-python >= 0.4 loads a vector as its Vector class
        return {i: (np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32), txt, md or {})
                for i, v, txt, md in rows}  # fmt: skip

    def _lossless(self, target: ReadTarget) -> bool:
        """A ``halfvec`` table keeps 16-bit floats: what it reads back is not the vector written."""
        return (target.handle or "vector") == "vector"

    def _delete_batch(self, physical: str, ids: list[str]) -> dict[str, str]:
        self._sql(f"DELETE FROM {self._t(physical)} WHERE id = ANY(%s)", (ids,), "delete")
        return {}

    # ------------------------------------------------------------------------------ reading
    def search(self, vector: np.ndarray | Sequence[float], k: int = 10, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        where, params = _where(parse_filter(filter))
        k = max(1, int(k))

        def run(target: ReadTarget) -> list[Hit]:
            vec = self._query_vector(vector, target.spec)
            metric = target.spec.metric if target.spec else "cosine"
            op, vtype = _OPS[metric][1], target.handle or "vector"
            t, cond = self._t(target.physical), f"{' WHERE ' + where if where else ''}"
            depth = k
            if self._quant_of(target.physical) == "bit" and target.spec is not None:
                # the rescore x k nearest by Hamming distance on the bits, re-ranked by the exact distance
                depth, bits = k * self.rescore, f"bit({int(target.spec.dims)})"
                sql = (f"SELECT id, text, metadata, d FROM (SELECT id, text, metadata, embedding {op} %s::{vtype} AS d FROM {t}{cond} "
                       f"ORDER BY binary_quantize(embedding)::{bits} <~> binary_quantize(%s::{vtype})::{bits} LIMIT {depth}) c "
                       f"ORDER BY d LIMIT {k}")  # fmt: skip
                args: tuple[Any, ...] = (vec, *params, vec)
            else:
                sql = f"SELECT id, text, metadata, embedding {op} %s::{vtype} AS d FROM {t}{cond} ORDER BY embedding {op} %s::{vtype} LIMIT {k}"
                args = (vec, *params, vec)

            def query(conn: Any) -> list[tuple]:
                conn.execute(f"SET LOCAL hnsw.ef_search = {min(1000, max(self.ef_search, depth))}")
                if self.pgvector_version() >= (0, 8):
                    conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                return conn.execute(sql, args).fetchall()

            hits = [Hit(id=i, score=_score(metric, float(d)), text=txt or "", metadata=md or {}) for i, txt, md, d in self._tx(query, "search")]
            hits.sort(key=lambda h: -h.score)  # relaxed_order may return neighbours slightly out of order
            return hits

        return self._on_read_target("search", run)

    supports_hybrid = True

    def text_search(self, query: str, k: int = 10, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        """PostgreSQL full-text search: documents with any of the query's words, ranked by ``ts_rank``
        (normalised by length). A table this connector creates keeps a ``lex`` column (GIN-indexed): the
        text and, weighted higher, the title and headings, as English words (stemmed, without stop
        words; ``text_config`` for another configuration) with identifiers split into their parts
        (``cgi.parse_header`` -> cgi, parse, header; ``ArgumentParser`` -> argument, parser). A table
        created before that column has an index on ``to_tsvector(config, text)``, searched as before."""
        where, params = _where(parse_filter(filter))
        target = self._require("text_search")
        lexical = self._lexical_of(target.physical)
        cfg = _literal(str(lexical.get("config") or "simple"))
        rank, rank_params = "ts_rank({doc}, qq.q, 1)", []
        if lexical.get("column") == "lex":
            doc, query_text = "lex", _words("%s", cfg)
            weighted = self._idf_rank(target.physical, query, cfg)
            if weighted is not None:
                rank, rank_params = weighted
        else:
            doc, query_text = f"to_tsvector({cfg}::regconfig, text)", f"plainto_tsquery({cfg}::regconfig, %s)"
        # any query word may match (OR), ranked by how many and how close: plainto_tsquery alone ANDs every
        # word, so a sentence-long query would match almost nothing (docs/benchmarks.md has the MRR of both)
        sql = (f"SELECT id, text, metadata, {rank.format(doc=doc)} AS r FROM {self._t(target.physical)}, "
               f"(SELECT NULLIF(replace({query_text}::text, '&', '|'), '')::tsquery AS q) qq "
               f"WHERE {doc} @@ qq.q{' AND ' + where if where else ''} ORDER BY r DESC LIMIT {max(1, int(k))}")  # fmt: skip
        rows = self._sql(sql, (*rank_params, query, *params), "text search")
        return [Hit(id=i, score=float(r), text=txt or "", metadata=md or {}) for i, txt, md, r in rows]

    #: seconds a table's term statistics (``pg_stats``) are kept before they are read again
    TERM_STATS_TTL = 300.0
    MAX_QUERY_TERMS = 32

    def _term_stats(self, physical: str) -> tuple[dict[str, float], float, float] | None:
        """(lexeme -> fraction of rows holding it, the fraction assumed for any other lexeme, rows) of a table's
        ``lex`` column, from the statistics ``ANALYZE`` keeps for the planner (``pg_stats.most_common_elems``:
        about ten times the statistics target of the most common lexemes; a lexeme not among them is taken at
        half the least frequent one's frequency, as PostgreSQL's own selectivity estimate does). A table never
        analysed is analysed once here (a sample of rows, as autovacuum would). None where there are none."""
        now = time.monotonic()
        cached = self._stats.get(physical)
        if cached is not None and now - cached[0] < self.TERM_STATS_TTL:
            return cached[1]
        query = ("SELECT s.most_common_elems::text::text[], s.most_common_elem_freqs, c.reltuples FROM pg_stats s "
                 "JOIN pg_namespace n ON n.nspname = s.schemaname JOIN pg_class c ON c.relnamespace = n.oid AND "
                 "c.relname = s.tablename WHERE s.schemaname = %s AND s.tablename = %s AND s.attname = 'lex'")  # fmt: skip
        rows = self._sql(query, (self.schema, physical), "term statistics")
        if not rows and physical not in self._stats:
            try:
                self._sql(f"ANALYZE {self._t(physical)} (lex)", None, "analyze")
            except StoreRejectedError as e:  # a read-only replica: no weights until its primary analyses the table
                log.info("%s: no term statistics for keyword weights (%s): plain ts_rank", self.url, e)
            rows = self._sql(query, (self.schema, physical), "term statistics")
        stats = None
        if rows and rows[0][0] and rows[0][1] and float(rows[0][2] or 0) > 0:
            elems, freqs, n = rows[0]
            # the frequencies are followed by their minimum, their maximum and the frequency of nulls
            stats = (dict(zip(elems, (float(f) for f in freqs[: len(elems)]), strict=True)), float(freqs[len(elems)]) / 2, float(n))
        self._stats[physical] = (now, stats)
        return stats

    def _idf_rank(self, physical: str, query: str, cfg: str) -> tuple[str, list[Any]] | None:
        """The rank expression (``{doc}``: the tsvector) that weights each query lexeme by its BM25 inverse
        document frequency, ``sum_t idf(t) * ts_rank(doc, t, 1)``: a word most records hold counts little, a
        rare one (an identifier, a name) much; plain ``ts_rank`` weighs every word alike. None without term
        statistics (plain ``ts_rank`` then)."""
        stats = self._term_stats(physical)
        if stats is None:
            return None
        freq, other, n = stats
        rows = self._sql(f"SELECT tsvector_to_array(to_tsvector({cfg}::regconfig, {_split_identifiers('%s')}))", (query,), "query terms")
        terms = list(rows[0][0] or [])[: self.MAX_QUERY_TERMS] if rows else []
        if not terms:
            return None
        parts, params = [], []
        for t in terms:
            f = min(max(freq.get(t, other), 0.5 / n), 1.0)
            idf = math.log(1.0 + (1.0 - f + 0.5 / n) / (f + 0.5 / n))
            parts.append(f"{idf:.6g} * ts_rank({{doc}}, %s::tsquery, 1)")
            params.append("'" + t.replace("\\", "\\\\").replace("'", "''") + "'")
        return " + ".join(parts), params

    def hybrid_search(self, query: str, vector: Any, k: int = 10, filter: Mapping[str, Any] | None = None, *,
                      alpha: float = DEFAULT_ALPHA, candidates: int | None = None, fusion: str = DEFAULT_FUSION) -> list[Hit]:  # fmt: skip
        """Keyword search and kNN, each ``candidates`` deep with the same filter, fused client-side (``fusion``).
        The keyword side is the learned sparse vectors where the table has them, else full-text search."""
        return self._fused(query, vector, k, filter, alpha, candidates, fusion, self._keyword_search)

    def _keyword_search(self, query: str, k: int, filter: Mapping[str, Any] | None) -> list[Hit]:
        target = self._require("hybrid search")
        return (self.sparse_search if self._sparse_of(target.physical) else self.text_search)(query, k, filter)

    def sparse_search(self, query: str, k: int = 10, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        """The records whose learned sparse vectors have the largest inner product with the query's (the model
        the table records; records sharing no term with the query are left out). An exact scan: pgvector's
        HNSW index on sparsevec takes at most 1,000 non-zero terms per vector, more than a SPLADE document
        may have."""
        where, params = _where(parse_filter(filter))
        target = self._require("sparse search")
        sparse = self._sparse_of(target.physical)
        if sparse is None:
            raise UnsupportedError(f"{self.url}: this table has no learned sparse vectors (create it with ?sparse_model=)")
        enc, dims = sparse
        idx, vals = enc.query(query)
        if not len(idx):
            return []
        q = _sparsevec(idx, vals, dims)
        sql = (f"SELECT id, text, metadata, -(sparse <#> %s::sparsevec) AS r FROM {self._t(target.physical)} "
               f"WHERE (sparse <#> %s::sparsevec) < 0{' AND ' + where if where else ''} "
               f"ORDER BY sparse <#> %s::sparsevec LIMIT {max(1, int(k))}")  # fmt: skip
        rows = self._sql(sql, (q, q, *params, q), "sparse search")
        return [Hit(id=i, score=float(r), text=txt or "", metadata=md or {}) for i, txt, md, r in rows]

    def _count(self, physical: str) -> int:
        return int(self._sql(f"SELECT count(*) FROM {self._t(physical)}", None, "count")[0][0])

    def count(self) -> int:
        physical = self._current_physical()
        return 0 if physical is None else self._count(physical)

    def iter_ids(self) -> Iterator[str]:
        physical = self._current_physical()
        if physical is None:
            return
        after = ""
        while True:
            rows = self._sql(f"SELECT id FROM {self._t(physical)} WHERE id > %s ORDER BY id LIMIT 5000", (after,), "list ids")
            yield from (r[0] for r in rows)
            if len(rows) < 5000:
                return
            after = rows[-1][0]

    def get(self, ids: Sequence[str]) -> dict[str, Hit]:
        ids = list(dict.fromkeys(ids))
        physical = self._current_physical() if ids else None
        if physical is None:
            return {}
        out: dict[str, Hit] = {}
        for part in batched(ids, 5000):
            for i, txt, md in self._sql(f"SELECT id, text, metadata FROM {self._t(physical)} WHERE id = ANY(%s)", (list(part),), "get"):
                out[i] = Hit(id=i, score=1.0, text=txt or "", metadata=md or {})
        return out

    # ------------------------------------------------------------------------------ lifecycle
    def _drop_physical(self, physical: str) -> None:
        self._sql(f"DROP TABLE IF EXISTS {self._t(physical)} CASCADE", None, "drop table")

    def _unpoint(self, target: str | None) -> None:
        def unpoint(conn: Any) -> None:  # the pointer row and the name's view, whatever they pointed at
            conn.execute(f"DELETE FROM {_q(self.schema)}.{REGISTRY} WHERE name = %s", (self.name,))
            conn.execute(f"DROP VIEW IF EXISTS {self._t(self.name)}")

        self._tx(unpoint, "delete alias")

    def _switch(self, physical: str) -> list[str]:
        def switch(conn: Any) -> str | None:
            row = conn.execute(f"SELECT target FROM {_q(self.schema)}.{REGISTRY} WHERE name = %s FOR UPDATE", (self.name,)).fetchone()
            conn.execute(f"INSERT INTO {_q(self.schema)}.{REGISTRY} (name, target) VALUES (%s, %s) ON CONFLICT (name) "
                         "DO UPDATE SET target = EXCLUDED.target, updated = now()", (self.name, physical))  # fmt: skip
            self._replace_view(conn, physical)
            return str(row[0]) if row else None

        old = self._tx(switch, "switch alias")
        return [old] if old else []


def _literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _score(metric: str, d: float) -> float:
    if metric == "cosine":
        return 1.0 - d  # <=> is the cosine distance
    return -d  # <#> is the negative inner product; <-> the L2 distance (higher is better: negated)


def _where(conds: list[Cond]) -> tuple[str, list[Any]]:
    """The portable filter as SQL on the JSONB metadata: equality by containment (type-exact, GIN-indexed),
    ranges on numbers only."""
    parts, params = [], []
    for c in conds:
        if c.op in ("$eq", "$ne"):
            parts.append(("NOT " if c.op == "$ne" else "") + "(metadata @> %s::jsonb)")
            params.append(json.dumps({c.field: c.value}))
        elif c.op in ("$in", "$nin"):
            alts = " OR ".join(["metadata @> %s::jsonb"] * len(c.value))
            parts.append(("NOT " if c.op == "$nin" else "") + f"({alts})")
            params += [json.dumps({c.field: v}) for v in c.value]
        else:
            sym = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[c.op]
            parts.append(f"(jsonb_typeof(metadata -> %s) = 'number' AND (metadata ->> %s)::float8 {sym} %s)")
            params += [c.field, c.field, float(c.value)]
    return " AND ".join(parts), params


#: metadata keys searched as words beside the text, weighted higher (the document title, a chunk's headings)
HEADING_KEYS = ("title", "heading_path")


def _split_identifiers(sql: str) -> str:
    """SQL that splits identifiers in the text expression ``sql`` into words: ``.`` and ``_`` become spaces,
    a lower-case letter or digit followed by a capital gets a space between (``ArgumentParser`` ->
    ``Argument Parser``). Applied to the stored text and to the query alike."""
    return f"regexp_replace(translate({sql}, '._', '  '), '([[:lower:][:digit:]])([[:upper:]])', '\\1 \\2', 'g')"


def _words(sql: str, cfg: str) -> str:
    """The OR-able ``tsquery`` of a query text (``sql``: its expression)."""
    return f"plainto_tsquery({cfg}::regconfig, {_split_identifiers(sql)})"


def _lex_expr(config: str) -> str:
    """The ``lex`` column's expression: the title and headings (weight B) and the text (weight D) as words."""
    cfg = _literal(config)
    heads = " || ' ' || ".join(f"coalesce(metadata->>{_literal(k)}, '')" for k in HEADING_KEYS)
    return (f"setweight(to_tsvector({cfg}::regconfig, {_split_identifiers(heads)}), 'B') || "
            f"to_tsvector({cfg}::regconfig, {_split_identifiers('text')})")


def _sparsevec(indices: Sequence[int], values: Sequence[float], dims: int) -> str:
    """pgvector's text form of a sparse vector: ``{i:v,...}/dims`` with 1-based indices."""
    return "{" + ",".join(f"{int(i) + 1}:{float(v):.7g}" for i, v in zip(indices, values, strict=True)) + f"}}/{int(dims)}"
