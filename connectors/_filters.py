"""The portable filter form every connector translates into its store's native filter.

``{"lang": "en", "year": {"$gte": 2020, "$lt": 2025}, "tag": {"$in": ["a", "b"]}}``: keys are top-level
metadata keys, a bare value means equality, all conditions are AND-ed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from embedrail.errors import ConfigError

__all__ = ["FILTER_OPS", "Cond", "parse_filter"]

FILTER_OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")


@dataclass(frozen=True, slots=True)
class Cond:
    field: str
    op: str  # one of FILTER_OPS
    value: Any  # scalar, or a list of scalars for $in/$nin


def parse_filter(flt: Mapping[str, Any] | None) -> list[Cond]:
    """Parse the portable filter form into a list of AND-ed conditions.

    ``{"lang": "en", "year": {"$gte": 2020, "$lt": 2025}, "tag": {"$in": ["a", "b"]}}``: keys are
    top-level metadata keys, a bare value means equality, operators are $eq $ne $gt $gte $lt $lte
    $in $nin, all conditions are AND-ed. Values are scalars (str, int, float, bool).
    """
    if not flt:
        return []
    if not isinstance(flt, Mapping):
        raise ConfigError(f"filter must be a dict like {{'lang': 'en'}}, got {type(flt).__name__}")
    out: list[Cond] = []
    for key, val in flt.items():
        if not isinstance(key, str) or not key or key.startswith("$"):
            raise ConfigError(
                f"filter key {key!r} is not a metadata field; the filter form is "
                "{'field': value, 'field2': {'$gte': 1}} (implicit AND, no $and/$or)"
            )
        if isinstance(val, Mapping):
            if not val:
                raise ConfigError(f"filter on {key!r} has no operator")
            for op, arg in val.items():
                if op not in FILTER_OPS:
                    raise ConfigError(f"unknown filter operator {op!r} on {key!r}; supported: {FILTER_OPS}")
                out.append(_cond(key, op, arg))
        else:
            out.append(_cond(key, "$eq", val))
    return out


def _cond(key: str, op: str, arg: Any) -> Cond:
    if op in ("$in", "$nin"):
        if isinstance(arg, str | bytes) or not isinstance(arg, Iterable):
            raise ConfigError(f"{op} on {key!r} needs a list of values, got {arg!r}")
        vals = list(arg)
        if not vals:
            raise ConfigError(f"{op} on {key!r} needs a non-empty list")
        for v in vals:
            _check_scalar(key, op, v)
        return Cond(key, op, vals)
    _check_scalar(key, op, arg)
    if op in ("$gt", "$gte", "$lt", "$lte") and (isinstance(arg, bool) or not isinstance(arg, int | float)):
        raise ConfigError(f"{op} on {key!r} needs a number, got {arg!r}")
    return Cond(key, op, arg)


def _check_scalar(key: str, op: str, v: Any) -> None:
    if not isinstance(v, str | int | float | bool) or (isinstance(v, float) and not math.isfinite(v)):
        raise ConfigError(f"filter value for {key!r} {op} must be a str, int, float or bool, got {v!r}")
