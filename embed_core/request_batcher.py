"""Merging concurrent embedding requests into shared embedder calls, for ``embedrail serve``.

:class:`Batcher` is the server's engine room: requests from many clients are queued, cut into
pieces, gathered into merged calls by a few worker threads and answered each with its own rows.
It knows nothing of HTTP; :mod:`embed_core.serve` puts it behind the OpenAI-compatible endpoints.
"""

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from embedrail.embed_core.base import BaseEmbedder
from embedrail.errors import ConfigError, InputError, ModelError

#: Most inputs one request (and one merged call) may carry.
MAX_INPUTS = 4096
#: How long the first request of a merged batch waits for others to join it (seconds).
MAX_WAIT = 0.004


class _Job:
    """One request: its inputs, cut into pieces that the workers run (each merged with other requests')."""

    __slots__ = ("key", "inputs", "left", "parts", "done", "notify", "vectors", "tokens", "error")

    def __init__(self, key: tuple[Any, ...], inputs: list[Any], notify: Callable[[], None] | None = None) -> None:
        self.key, self.inputs = key, inputs
        self.left = 0  # pieces not finished yet
        self.parts: list[tuple[int, Any]] = []  # (first input, rows) per finished piece
        self.done = threading.Event()
        self.notify = notify  # called from a worker thread when the job is done (the async path)
        self.vectors: Any = None
        self.tokens = 0
        self.error: BaseException | None = None

    def finish(self) -> None:
        self.done.set()
        if self.notify is not None:
            self.notify()


class _Piece:
    __slots__ = ("job", "start", "inputs")

    def __init__(self, job: _Job, start: int, inputs: list[Any]) -> None:
        self.job, self.start, self.inputs = job, start, inputs


def default_workers(embedder: BaseEmbedder, workers: int | None = None) -> tuple[int, int | None]:
    """(workers, CPU threads per worker) for serving ``embedder``: on CPU ``workers`` (default one per
    core, at most 4) with the cores shared out among them; on a GPU, or for an embedder with no local
    model, ``workers`` (default 1) and no thread budget."""
    device = getattr(getattr(embedder, "placement", None), "device", None)
    if getattr(device, "type", None) != "cpu":
        return workers or 1, None
    from embedrail.embed_core.device import available_cpus

    cpus = available_cpus()
    workers = workers or min(cpus, 4)
    return workers, max(1, cpus // workers)


class Batcher:
    """Merges concurrent requests into shared embedder calls (as TEI and Infinity do), run by a few
    worker threads.

    A request is cut into one piece per worker (a lone large request keeps every worker busy). An
    idle worker takes the oldest piece and gathers queued pieces of other requests of the same kind
    (``input_type``, instruction, text or token ids) up to ``max_inputs`` inputs, waiting at most
    ``max_wait`` seconds for more to arrive — and not at all once every input seen in flight lately
    (the most in the last one to two seconds: the clients that keep it busy) is queued or running,
    or once it holds its workers' share of them (the next idle worker gathers the rest). So a lone
    client never waits, and a fixed set of busy clients is answered in calls as large as they allow.
    It embeds them in one call (the embedder's own token-budget batching, sorted by length, then
    applies) and hands each request its own rows in order. A merged call that fails on bad input is
    retried piece by piece, so one bad request fails alone. ``usage`` of a merged call is
    apportioned to its pieces by input length; it adds up to exactly the tokens the model ran.

    On CPU each worker runs its forward passes on ``threads`` cores (default: one worker per core,
    one core each): the cores work on different calls instead of splitting every small operator
    of one call and meeting at a barrier after each, which small merged batches and a busy event
    loop make slow (``benchmarks/serve_concurrency.py`` measures both).
    """

    def __init__(self, embedder: BaseEmbedder, *, max_inputs: int = MAX_INPUTS, max_wait: float = MAX_WAIT,
                 workers: int | None = None, threads: int | None = None,
                 on_call: Callable[[int, int, float], None] | None = None) -> None:  # fmt: skip
        """``on_call(inputs, tokens, seconds)`` is told of every embedder call (the server's metrics)."""
        self.embedder, self.max_inputs, self.max_wait, self.on_call = embedder, max_inputs, max_wait, on_call
        self.workers, auto_threads = default_workers(embedder, workers)
        self.threads = threads or auto_threads
        self.calls = 0  # embedder calls made (a merged batch is one)
        self.requests = 0  # requests answered
        self.busy = 0.0  # seconds spent in embedder calls, summed over workers
        self._pending: list[_Piece] = []
        self._inflight = 0  # inputs queued and not answered yet
        self._peak = [0, 0]  # most inputs in flight in this and the previous second
        self._peak_at = time.monotonic()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"embedrail-batcher-{n}", daemon=True)
                         for n in range(self.workers)]  # fmt: skip
        for t in self._threads:
            t.start()

    def submit(self, key: tuple[Any, ...], inputs: list[Any]) -> tuple[Any, int]:
        """Queue ``inputs`` and block until their rows are ready: (vectors, tokens)."""
        job = self._queue(_Job(key, inputs))
        job.done.wait()
        return _result(job)

    async def embed(self, key: tuple[Any, ...], inputs: list[Any]) -> tuple[Any, int]:
        """``submit`` for the event loop: no thread waits per request; a worker wakes the request's
        coroutine when its rows are ready."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))

        job = self._queue(_Job(key, inputs, wake))
        await fut
        return _result(job)

    def _queue(self, job: _Job) -> _Job:
        n = len(job.inputs)
        if not n:
            raise InputError("nothing to embed: the request has no inputs")
        size = max(1, -(-n // self.workers))
        pieces = [_Piece(job, i, job.inputs[i : i + size]) for i in range(0, n, size)]
        with self._cond:
            if self._closed:
                raise ModelError("the embedding server is shutting down")
            job.left = len(pieces)
            self._inflight += n
            now = time.monotonic()
            if now - self._peak_at >= 1.0:
                self._peak = [0, self._peak[0]] if now - self._peak_at < 2.0 else [0, 0]
                self._peak_at = now
            self._peak[0] = max(self._peak[0], self._inflight)
            self._pending.extend(pieces)
            self._cond.notify(len(pieces))
        return job

    @property
    def queued_inputs(self) -> int:
        """Inputs queued or being embedded, not answered yet."""
        return self._inflight

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=10)

    def _take(self) -> list[_Piece] | None:
        """The next call's pieces: the oldest queued piece and others of its kind (one piece per request),
        claimed as they are gathered so that no other worker takes them."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None
            group = [self._pending.pop(0)]
            key, jobs, size = group[0].job.key, {id(group[0].job)}, len(group[0].inputs)
            deadline = time.monotonic() + self.max_wait
            while True:
                i = 0
                while i < len(self._pending) and size < self.max_inputs:
                    p = self._pending[i]
                    if p.job.key == key and id(p.job) not in jobs and size + len(p.inputs) <= self.max_inputs:
                        group.append(self._pending.pop(i))
                        jobs.add(id(p.job))
                        size += len(p.inputs)
                    else:
                        i += 1
                left = deadline - time.monotonic()
                # every client seen lately has a request in (a fixed set of busy clients): no one left to wait
                # for; and a worker's share of the load is enough: the next worker gathers the rest
                peak = max(self._peak)
                enough = self._inflight >= peak or size >= -(-peak // self.workers)
                if size >= self.max_inputs or left <= 0 or enough or self._closed:
                    return group
                self._cond.wait(left)  # more requests may join while the first one waits

    def _loop(self) -> None:
        if self.threads:
            self.embedder.set_thread_budget(self.threads)
        while (group := self._take()) is not None:
            live = [p for p in group if p.job.error is None]  # a request that already failed runs no further
            start = time.perf_counter()
            try:
                if live:
                    self._run(live)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting requests
                if len(live) > 1 and isinstance(exc, (InputError, ConfigError)):
                    for p in live:  # one bad request must not fail the others
                        try:
                            self._run([p])
                        except BaseException as one:  # noqa: BLE001
                            self._fail(p, one)
                else:
                    for p in live:
                        self._fail(p, exc)
            finally:
                finished = []
                with self._cond:
                    self.busy += time.perf_counter() - start
                    for p in group:
                        job = p.job
                        job.left -= 1
                        if job.left == 0:
                            if job.error is None:
                                parts = sorted(job.parts, key=lambda part: part[0])
                                job.vectors = parts[0][1] if len(parts) == 1 else np.concatenate([v for _, v in parts])
                            self.requests += 1
                            self._inflight -= len(job.inputs)
                            finished.append(job)
                for job in finished:
                    job.finish()

    def _fail(self, piece: _Piece, exc: BaseException) -> None:
        with self._cond:
            if piece.job.error is None:
                piece.job.error = exc

    def _run(self, group: list[_Piece]) -> None:
        kind, instruction, ids = group[0].job.key
        inputs = [x for p in group for x in p.inputs]
        emb = self.embedder
        began = time.perf_counter()
        with emb.stats.tally() as mine:  # this worker's tokens, while the others count too
            if ids:
                vectors = emb.embed_token_ids(inputs)  # type: ignore[attr-defined]
            elif kind == "query":
                vectors = emb.embed_queries(inputs, instruction=instruction)
            elif kind == "document":
                vectors = emb.embed_documents(inputs)
            else:
                vectors = emb.embed_raw(inputs)
        tokens = mine.tokens
        if self.on_call is not None:
            self.on_call(len(inputs), tokens, time.perf_counter() - began)
        weights = [sum(len(x) for x in p.inputs) for p in group]
        total_w, given, start = max(sum(weights), 1), 0, 0
        with self._cond:
            self.calls += 1
            for n, (p, w) in enumerate(zip(group, weights, strict=True)):
                p.job.parts.append((p.start, vectors[start : start + len(p.inputs)]))
                start += len(p.inputs)
                share = tokens - given if n == len(group) - 1 else tokens * w // total_w
                p.job.tokens += share
                given += share


def _result(job: _Job) -> tuple[Any, int]:
    if job.error is not None:
        raise job.error
    return job.vectors, job.tokens
