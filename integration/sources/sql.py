"""``sql+<sqlalchemy-url>``: rows of a SQL query; with a watermark column, an incremental feed.

A feed reads the rows whose watermark is at or above the highest one a previous run stored, minus
``watermark_lag``: ``>=`` keeps the rows that share the stored watermark (and one committed later with
the same value), the look-back catches a row committed late with an older watermark (a long transaction,
an application clock). Rows read again cost a hash comparison each: their documents are unchanged, so
nothing is chunked, embedded or written for them.

A database that is down or drops the connection raises ``SourceUnavailableError`` (retryable: nothing
was lost, a later run reads it); a query the database refuses is a ``ConfigError``.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterator
from typing import Any

from embedrail.errors import ConfigError, SourceUnavailableError
from embedrail.integration.sources.base import Source, jsonable

__all__ = ["SqlSource", "decode_watermark", "encode_watermark"]


class SqlSource(Source):
    """Rows of a SQL query through SQLAlchemy. With ``watermark`` (a column name) it is a feed: each run
    reads only the rows whose watermark is at or above the one stored after the previous run, less
    ``watermark_lag`` (seconds for date/time watermarks, units for numeric ones; default 0)."""

    def __init__(
        self,
        url: str,
        *,
        query: str | None = None,
        table: str | None = None,
        watermark: str | None = None,
        watermark_lag: float | str | None = None,
        **opts: Any,
    ) -> None:
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(url)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"bad SQL source URL: {e}") from None
        opts.setdefault("name", "sql+" + parsed.render_as_string(hide_password=True))
        super().__init__(**opts)
        if not query and not table:
            raise ConfigError("a sql+ source needs query=SELECT ... or table=NAME")
        if table and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", table):
            raise ConfigError(f"bad table name {table!r}")
        if watermark and not _plain_name(watermark):
            raise ConfigError(f"bad watermark column {watermark!r}")
        self.url = url
        self.query = query or f"SELECT * FROM {table}"
        self.watermark = watermark
        try:
            self.watermark_lag = float(watermark_lag or 0)
        except (TypeError, ValueError):
            raise ConfigError(f"watermark_lag must be a number (seconds, or watermark units), got {watermark_lag!r}") from None
        if self.watermark_lag < 0:
            raise ConfigError(f"watermark_lag must be >= 0, got {watermark_lag!r}")
        if self.watermark_lag and not watermark:
            raise ConfigError("watermark_lag applies to a feed: give watermark=COLUMN too")
        self.is_feed = bool(watermark)
        self.watermark_key = f"{self.name}|{self.query}|{watermark}" if watermark else None
        self._since: Any = None
        self._max: Any = None
        self._engine: Any = None

    def set_watermark(self, value: Any) -> None:
        self._since = value

    def max_watermark(self) -> Any:
        return self._max

    def _get_engine(self) -> Any:
        if self._engine is None:
            from sqlalchemy import create_engine

            self._engine = create_engine(self.url)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _lower_bound(self) -> Any:
        """The lowest watermark to read: the stored one less the look-back."""
        since, lag = self._since, self.watermark_lag
        if not lag:
            return since
        if isinstance(since, _dt.datetime):
            return since - _dt.timedelta(seconds=lag)
        if isinstance(since, _dt.date):
            return since - _dt.timedelta(days=int(-(-lag // 86400)))
        if isinstance(since, int | float) and not isinstance(since, bool):
            return since - (int(lag) if isinstance(since, int) and float(lag).is_integer() else lag)
        raise ConfigError(f"watermark_lag needs a numeric or date/time watermark; {self.watermark} holds {type(since).__name__}")

    # --- split reads: key ranges of the id column, decided once by the plan step -------------------------
    def shares(self, count: int, state: dict[str, Any] | None) -> list[dict[str, Any]] | None:
        """``count`` ranges of the id column with about as many rows each (``NTILE`` over the query, one pass
        over the ids only), so each partition's query reads only its rows; the database evaluates the ranges,
        so its own ordering decides and a repeated id stays in one share. Rows without an id go to the first
        share (they are bad rows, reported once). None (every partition reads the whole query and keeps its
        hash share) when the id column is not a plain name or its values are neither integers nor strings."""
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        idc = self.id_field
        if count <= 1 or not _plain_name(idc):
            return None
        where, params = "", {}
        if self.watermark and self._since is not None:
            where, params = f" AND _src.{self.watermark} >= :_wm", {"_wm": self._lower_bound()}
        sql = (f"SELECT MIN(_k) FROM (SELECT _src.{idc} AS _k, NTILE({int(count)}) OVER (ORDER BY _src.{idc}) AS _t "
               f"FROM ({self.query}) _src WHERE _src.{idc} IS NOT NULL{where}) _tiles GROUP BY _t ORDER BY _t")  # fmt: skip
        try:
            with self._get_engine().connect() as conn:
                lows = [r[0] for r in conn.execute(text(sql), params)]
        except SQLAlchemyError as e:
            first = str(e).splitlines()[0]
            if _transient(e):
                raise SourceUnavailableError(f"{self.name}: splitting the source failed: {first}; run again") from e
            raise ConfigError(f"SQL source failed: {first}") from None
        if any(isinstance(v, bool) or not isinstance(v, int | str) for v in lows):
            return None
        cuts = lows[1:]  # share k holds ids in [cuts[k-1], cuts[k]); the first also the NULL ids
        out: list[dict[str, Any]] = []
        for k in range(count):
            if k > len(cuts):
                out.append({"empty": True})  # fewer rows than partitions
                continue
            out.append({"ge": cuts[k - 1] if k else None, "lt": cuts[k] if k < len(cuts) else None, "nulls": k == 0})
        return out

    def _share_predicate(self, share: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        idc, parts, params = self.id_field, [], {}
        if share.get("ge") is not None:
            parts.append(f"_src.{idc} >= :_ge")
            params["_ge"] = share["ge"]
        if share.get("lt") is not None:
            parts.append(f"_src.{idc} < :_lt")
            params["_lt"] = share["lt"]
        own = " AND ".join(parts) or "1 = 1"
        if share.get("nulls"):
            own = f"({own} OR _src.{idc} IS NULL)"
        return own, params

    def _rows(self) -> Iterator[tuple[str, Any]]:
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        sql, params = self.query, {}
        where: list[str] = []
        if self.watermark and self._since is not None:
            where.append(f"_src.{self.watermark} >= :_wm")
            params["_wm"] = self._lower_bound()
        if self.share is not None:
            if self.share.get("empty"):
                return
            own, bounds = self._share_predicate(self.share)
            where.append(own)
            params.update(bounds)
        if where or self.watermark:
            sql = f"SELECT * FROM ({self.query}) _src" + (" WHERE " + " AND ".join(where) if where else "")
            if self.watermark:
                sql += f" ORDER BY _src.{self.watermark}"
        self._max = self._since
        try:
            with self._get_engine().connect() as conn:
                result = conn.execution_options(stream_results=True).execute(text(sql), params)
                for i, row in enumerate(result.mappings(), 1):
                    d = dict(row)
                    if self.watermark:
                        v = d.get(self.watermark)
                        if v is not None and (self._max is None or _wm_gt(v, self._max)):
                            self._max = v
                        d.pop(self.watermark, None)
                        d[self.watermark] = jsonable(v)
                    yield f"{self.name} row {i}", d
        except SQLAlchemyError as e:
            first = str(e).splitlines()[0]
            if _transient(e):  # the database is down, restarting or dropped the connection
                raise SourceUnavailableError(f"{self.name}: reading the source failed: {first}; nothing was lost: run "
                                             "again when the database is back") from e  # fmt: skip
            raise ConfigError(f"SQL source failed: {first}") from None


def _plain_name(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None


def _transient(e: BaseException) -> bool:
    """Whether a database error is an outage (worth a later run) rather than a bad query: by the driver's
    SQLSTATE (PostgreSQL: connection, resources, shutdown, serialization), SQLite's result code (busy,
    locked), else SQLAlchemy's classification (``OperationalError``, a lost connection)."""
    from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError

    from embedrail.connectors._retry import sqlstate_kind

    orig = getattr(e, "orig", None)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(state, str) and state:
        return sqlstate_kind(state) == "transient"
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
    return isinstance(e, OperationalError | DisconnectionError) or (isinstance(e, DBAPIError) and e.connection_invalidated)


def _wm_gt(a: Any, b: Any) -> bool:
    try:
        return a > b
    except TypeError:
        return str(a) > str(b)


def encode_watermark(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return json.dumps({"t": "datetime", "v": value.isoformat()})
    if isinstance(value, _dt.date):
        return json.dumps({"t": "date", "v": value.isoformat()})
    if isinstance(value, int | float | str):
        return json.dumps({"t": "json", "v": value})
    return json.dumps({"t": "json", "v": str(value)})


def decode_watermark(raw: str | None) -> Any:
    if raw is None:
        return None
    d = json.loads(raw)
    if d["t"] == "datetime":
        return _dt.datetime.fromisoformat(d["v"])
    if d["t"] == "date":
        return _dt.date.fromisoformat(d["v"])
    return d["v"]

