"""Input validation and token-aware text splitting."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from embedrail.errors import ConfigError, InputError

_WORD = re.compile(r"\S+")


def check_texts(texts: Sequence[str] | Iterable[str], *, what: str = "texts", offset: int = 0) -> list[str]:
    """Validate a batch of input texts; raise :class:`InputError` naming the bad position.

    Empty and whitespace-only texts are refused (they would embed to a meaningless vector): the sync
    engine drops empty chunks before embedding.
    """
    if isinstance(texts, (str, bytes)):
        raise InputError(f"{what} must be a list of strings, not a single {type(texts).__name__}; wrap it in a list")
    if texts is None:
        raise InputError(f"{what} must be a list of strings, got None")
    try:
        items = list(texts)
    except TypeError as exc:
        raise InputError(f"{what} must be a list of strings, got {type(texts).__name__}") from exc
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise InputError(
                f"{what}[{i + offset}] is a {type(text).__name__}, not a str; convert your inputs to text first"
            )
        if not text.strip():
            raise InputError(
                f"{what}[{i + offset}] is empty or whitespace only; drop empty texts before embedding"
            )
    return items


def approx_token_spans(text: str) -> list[tuple[int, int]]:
    """Pseudo-token character spans for the tokenizer-less fallback: words, long words cut in pieces.

    Each span counts as one token, and words are cut every 4 characters beyond a first 4, so
    ``len(spans)`` over-estimates a BPE/WordPiece count for ordinary prose (a conservative bound).
    """
    spans: list[tuple[int, int]] = []
    for m in _WORD.finditer(text):
        start, end = m.span()
        while end - start > 6:
            spans.append((start, start + 4))
            start += 4
        spans.append((start, end))
    return spans


def approx_count(text: str) -> int:
    """Conservative token estimate of ``text`` without a tokenizer (see :func:`approx_token_spans`)."""
    return len(approx_token_spans(text))


_PARAGRAPH = re.compile(r"\n[^\S\n]*\n")


def split_by_offsets(
    text: str,
    offsets: Sequence[tuple[int, int]],
    max_tokens: int,
    overlap: int = 0,
    measure: Callable[[str], int] | None = None,
) -> list[str]:
    """Split ``text`` into windows of at most ``max_tokens`` tokens given each token's char span.

    Chunks are exact substrings of ``text`` (from the first token's start to the last token's end).
    A window prefers to end at a paragraph, line or sentence break found in its last quarter.
    Consecutive windows share ``overlap`` tokens. With ``measure`` (token count of a string on its
    own), a window whose re-tokenised text exceeds ``max_tokens`` (BPE merges can differ at the
    edges of a substring) is shortened until it fits.
    """
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if not isinstance(overlap, int) or overlap < 0 or overlap >= max_tokens:
        raise ConfigError(f"overlap must be an integer with 0 <= overlap < max_tokens, got {overlap!r}")
    spans = [(s, e) for s, e in offsets if e > s]
    if not spans:
        return [text.strip()] if text.strip() else []
    n = len(spans)
    if n <= max_tokens and (measure is None or measure(text[spans[0][0] : spans[-1][1]].strip()) <= max_tokens):
        return [text[spans[0][0] : spans[-1][1]].strip()]
    chunks: list[str] = []
    start = 0
    while start < n:
        end = min(start + max_tokens, n)  # exclusive token index
        if end < n:
            end = _best_break(text, spans, start, end)
        if measure is not None:
            while end - start > 1 and measure(text[spans[start][0] : spans[end - 1][1]].strip()) > max_tokens:
                end -= 1
        chunk = text[spans[start][0] : spans[end - 1][1]].strip()
        if chunk:
            chunks.append(chunk)
        if end >= n:
            break
        start = max(end - overlap, start + 1)
    return chunks


def _break_rank(text: str, spans: Sequence[tuple[int, int]], cut: int) -> int:
    """How good a cut between token ``cut - 1`` and token ``cut`` is (lower is better; 9 = none)."""
    gap = text[spans[cut - 1][1] : spans[cut][0]]
    nxt = text[spans[cut][0] : spans[cut][1]]
    gap += nxt[: len(nxt) - len(nxt.lstrip())]  # byte-level BPE tokens carry their leading space
    if not gap:
        return 9
    if _PARAGRAPH.search(gap):
        return 0
    if "\n" in gap:
        return 1
    if text[spans[cut - 1][1] - 1] in ".!?;:":
        return 2
    return 3 if gap.isspace() else 9


#: How far back (as a fraction of the window) a break of each rank may move the window's end.
_REACH = {0: 0.5, 1: 0.4, 2: 0.3, 3: 0.15}


def _best_break(text: str, spans: Sequence[tuple[int, int]], start: int, end: int) -> int:
    """Move ``end`` back to just after the best natural break: a paragraph break within the last
    half of the window, a line break within the last 40 %, a sentence end within the last 30 %,
    a space within the last 15 %; else cut mid-word at the budget."""
    size = end - start
    best, best_rank = end, 9
    lowest = start + max(1, size - int(size * _REACH[0]))
    for cut in range(end, lowest - 1, -1):
        rank = _break_rank(text, spans, cut)
        if rank < best_rank and end - cut <= size * _REACH.get(rank, 0):
            best, best_rank = cut, rank
            if rank == 0:
                break
    return best
