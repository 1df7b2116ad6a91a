"""Split reads of a file: P partitions read P byte ranges that start at record boundaries, so the file is read
about once in total instead of once per partition (the Hadoop ``TextInputFormat`` idea).

A record ends at a newline; in a CSV file only at a newline outside quotes. RFC 4180 doubles a quote inside a
quoted field, so a newline is outside quotes exactly when the number of ``"`` before it is even: the
boundaries are found by counting bytes (``bytes.count``, memory speed), never by parsing the records.

The plan step records the file's ``state`` (size, and a hash of its last bytes); every partition reads only
the first ``size`` bytes (rows appended meanwhile wait for the next run) and checks that those bytes did not
change (a file rewritten between the plan and a partition would otherwise give overlapping shares).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedrail.errors import SourceUnavailableError

__all__ = ["boundaries", "check_state", "file_state", "lines", "shares"]

BLOCK = 1 << 20
TAIL = 4096  # bytes before the recorded size whose hash tells an append from a rewrite


def file_state(path: Path) -> dict[str, Any]:
    """What the plan step records of a file: its size and a hash of its last bytes."""
    size = os.stat(path).st_size
    return {"size": size, "tail": _tail(path, size)}


def _tail(path: Path, size: int) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, size - TAIL))
        return hashlib.blake2b(f.read(min(TAIL, size)), digest_size=16).hexdigest()


def check_state(path: Path, state: dict[str, Any]) -> None:
    """Raise ``SourceUnavailableError`` if the first ``state["size"]`` bytes of the file are not what the plan saw."""
    size = int(state["size"])
    if os.stat(path).st_size < size or _tail(path, size) != state["tail"]:
        raise SourceUnavailableError(f"{path} changed while this run read it (it shrank or was rewritten after the plan "
                                     "step, so the partitions' shares no longer fit it): nothing was written for the "
                                     "documents not read; run again")  # fmt: skip


def boundaries(path: Path, start: int, size: int, targets: list[int], *, quoted: bool) -> list[tuple[int, int]]:
    """For each target offset (ascending, in ``[start, size]``): the first record start at or after it, and the
    number of newlines in ``[start, that offset)`` (to number lines). A record starts at ``start`` or right after
    a record-ending newline; none before ``size``: ``size``."""
    out: list[tuple[int, int]] = []
    ti, pending = 0, [max(t, start) for t in targets]
    # a target at ``start`` is a record start of its own
    while ti < len(pending) and pending[ti] <= start:
        out.append((start, 0))
        ti += 1
    lines = quotes = 0  # newlines and quotes in [start, pos + i)
    pos = start
    with open(path, "rb") as f:
        f.seek(start)
        while ti < len(pending) and pos < size:
            block = f.read(min(BLOCK, size - pos))
            if not block:
                break
            i = 0
            while ti < len(pending):
                j = max(pending[ti] - 1 - pos, i)  # the newline ending the record before the target is at >= t - 1
                if j >= len(block):
                    break
                lines += block.count(b"\n", i, j)
                if quoted:
                    quotes += block.count(b'"', i, j)
                i = j
                n = block.find(b"\n", i)
                if n < 0:
                    break
                if quoted:
                    quotes += block.count(b'"', i, n)
                lines += block.count(b"\n", i, n) + 1
                i = n + 1
                if quoted and quotes % 2:
                    continue  # a newline inside a quoted field: search on
                b = pos + n + 1
                while ti < len(pending) and pending[ti] <= b:
                    out.append((b, lines))
                    ti += 1
            lines += block.count(b"\n", i)
            if quoted:
                quotes += block.count(b'"', i)
            pos += len(block)
    out.extend((size, lines) for _ in range(len(pending) - ti))
    return out


def shares(path: Path, start: int, size: int, count: int, first_line: int, *, quoted: bool) -> list[dict[str, Any]]:
    """``count`` byte ranges of ``[start, size)`` of about equal size, each from a record start to the next share's:
    ``{"start", "end", "line"}`` (``line``: the line number its first record is on)."""
    cuts = boundaries(path, start, size, [start + k * (size - start) // count for k in range(1, count)], quoted=quoted)
    starts = [(start, 0), *cuts, (size, 0)]
    return [{"start": starts[k][0], "end": starts[k + 1][0], "line": first_line + starts[k][1]} for k in range(count)]


def lines(path: Path, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The lines (with their newline) that start in ``[start, end)`` (``end`` None: to the end of the file)."""
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        for raw in f:
            if end is not None and pos >= end:
                return
            pos += len(raw)
            yield raw
