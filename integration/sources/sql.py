"""``sql+<sqlalchemy-url>``: rows of a SQL query; with a watermark column, an incremental feed."""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterator
from typing import Any

from embedrail.errors import ConfigError

from .base import Source, jsonable

__all__ = ["SqlSource", "decode_watermark", "encode_watermark"]


class SqlSource(Source):
    """Rows of a SQL query through SQLAlchemy. With ``watermark`` (a column name) it is a feed:
    each run reads only rows whose watermark is above the one stored after the previous run."""

    def __init__(
        self,
        url: str,
        *,
        query: str | None = None,
        table: str | None = None,
        watermark: str | None = None,
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
        if watermark and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", watermark):
            raise ConfigError(f"bad watermark column {watermark!r}")
        self.url = url
        self.query = query or f"SELECT * FROM {table}"
        self.watermark = watermark
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

    def _rows(self) -> Iterator[tuple[str, Any]]:
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        sql, params = self.query, {}
        if self.watermark:
            wm = self.watermark
            where = f" WHERE _src.{wm} > :_wm" if self._since is not None else ""
            sql = f"SELECT * FROM ({self.query}) _src{where} ORDER BY _src.{wm}"
            if self._since is not None:
                params["_wm"] = self._since
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
            raise ConfigError(f"SQL source failed: {str(e).splitlines()[0]}") from None


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

