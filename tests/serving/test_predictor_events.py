"""PayloadEmitter's own HTTP posting against a real loopback server (no kserve import).

The senders keep one HTTP/1.1 connection each and pipeline the events on it; these tests make
the server close connections (politely or not, in the middle of a pipeline), answer errors,
hang, go away, and send ids that would break a header, and count what arrived.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kfloop.core.errors import ConfigError
from kfloop.local.process import free_port
from kfloop.serving import payload_events
from kfloop.serving.payload_events import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    EventIdentity,
    PayloadEmitter,
)

IDENTITY = EventIdentity(inference_service="churn", namespace="test")


@dataclass
class Sink:
    url: str = ""
    close_every: int = 0  # answer "Connection: close" on every n-th post (0: never)
    status: int = 200
    refuse_first: int = 0  # answer 503 to this many posts first (the logger restarting)
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def sink() -> Iterator[Sink]:
    state = Sink()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            with state.lock:
                state.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                count = len(state.posts)
            self.send_response(503 if count <= state.refuse_first else state.status)
            self.send_header("content-length", "0")
            if state.close_every and count % state.close_every == 0:
                self.send_header("connection", "close")
                self.close_connection = True
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/events?x=1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


async def _emit_all(emitter: PayloadEmitter, ids: list[str]) -> int:
    for event_id in ids:
        emitter.emit(event_id, {"instances": [[1, "a"]]}, {"predictions": [0.5]})
    return await emitter.close(30)


def test_every_event_arrives_when_the_server_closes_connections(sink: Sink) -> None:
    sink.close_every = 3
    emitter = PayloadEmitter(sink.url, IDENTITY, senders=3)
    ids = [f"id-{i}" for i in range(300)]
    left = asyncio.run(_emit_all(emitter, ids))
    assert left == 0
    assert (emitter.sent, emitter.failed, emitter.dropped) == (600, 0, 0)
    with sink.lock:
        got = [h["ce-id"] for h, _ in sink.posts if h["ce-type"] == REQUEST_TYPE]
        headers = sink.posts[0][0]
    assert sorted(got) == sorted(ids)
    assert headers["ce-namespace"] == "test" and headers["content-type"] == "application/json"


def test_control_characters_in_an_id_cannot_inject_a_header(sink: Sink) -> None:
    emitter = PayloadEmitter(sink.url, IDENTITY, senders=1)
    asyncio.run(_emit_all(emitter, ["a\r\nx-injected: 1"]))
    with sink.lock:
        posts = list(sink.posts)
    assert len(posts) == 2
    for headers, body in posts:
        assert headers["ce-id"] == "a__x-injected: 1"
        assert "x-injected" not in headers
        assert body


@pytest.mark.parametrize("pipeline", [64, 1])
def test_a_refused_event_is_posted_again_until_taken(sink: Sink, pipeline: int) -> None:
    """429/503 (the logger's buffer is full, or it restarts) is not a loss: the refused
    events go again after a back-off and are delivered, each once, pipelined or not."""
    sink.refuse_first = 3
    emitter = PayloadEmitter(sink.url, IDENTITY, senders=1, pipeline_events=pipeline)
    assert asyncio.run(_emit_all(emitter, ["r1", "r2"])) == 0
    assert (emitter.sent, emitter.failed) == (4, 0)
    posts = [(h["ce-id"], h["ce-type"]) for h, _ in sink.posts]
    every = [(i, t) for i in ("r1", "r2") for t in (REQUEST_TYPE, RESPONSE_TYPE)]
    assert sorted(posts[3:]) == sorted(every)  # each taken once
    assert set(posts[:3]) <= set(posts[3:])  # the refused ones again


def test_error_answers_and_a_missing_logger_are_counted_not_raised(sink: Sink) -> None:
    sink.status = 500  # not retried (429/503 are)
    emitter = PayloadEmitter(sink.url, IDENTITY, senders=2)
    assert asyncio.run(_emit_all(emitter, ["e1", "e2"])) == 0
    assert (emitter.sent, emitter.failed) == (0, 4)

    nobody = PayloadEmitter(f"http://127.0.0.1:{free_port()}/", IDENTITY, senders=2, timeout=2)
    assert asyncio.run(_emit_all(nobody, ["n1", "n2", "n3"])) == 0
    assert (nobody.sent, nobody.failed) == (0, 6)


def test_close_stops_a_sender_that_missed_its_cancel(
    sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's ``asyncio.wait_for`` drops a cancel that comes as its awaitable
    completes; a sender that missed close()'s cancel that way went on posting and then waited
    on the queue forever, so the predictor never exited after SIGTERM (seen once in CI).
    Here the first connection waits until close() cancels the sender and drops that cancel,
    then the sender goes on posting (a connection every post, 50 ms each): close() still
    returns soon after its drain time, and nothing is posted after it."""
    sink.close_every = 1  # a new connection for every post
    real_connect = payload_events._Poster._connect
    dropped: list[bool] = []

    async def connect_dropping_the_first_cancel(self: Any) -> Any:
        if not dropped:
            try:
                await asyncio.sleep(30)  # nothing is posted until close() cancels the sender
            except asyncio.CancelledError:
                dropped.append(True)  # as wait_for did when the connection was made meanwhile
        else:
            await asyncio.sleep(0.05)
        return await real_connect(self)

    monkeypatch.setattr(payload_events._Poster, "_connect", connect_dropping_the_first_cancel)
    emitter = PayloadEmitter(sink.url, IDENTITY, senders=1)

    async def scenario() -> tuple[int, float, int, int]:
        for i in range(30):
            emitter.emit(f"c-{i}", {"instances": [[1, "a"]]}, {"predictions": [0.5]})
        started = time.monotonic()
        left = await asyncio.wait_for(emitter.close(0.5), 30)
        took = time.monotonic() - started
        with sink.lock:
            posted = len(sink.posts)
        await asyncio.sleep(0.6)  # a sender still running would post meanwhile
        with sink.lock:
            return left, took, posted, len(sink.posts)

    left, took, posted, later = asyncio.run(scenario())
    assert dropped, "the scenario did not drop a cancel"
    assert posted >= 1  # the sender went on after the cancel it dropped...
    assert later == posted  # ...and is gone once close() returned
    assert took < 0.5 + payload_events.STOP_WAIT_S * 2, took
    assert left == 60 and emitter.sent < 60  # every event was still queued when the drain ended


# -- pipelining, against a server on raw sockets ---------------------------------------------------


@dataclass
class RawSink:
    """A loopback HTTP/1.1 server that reads whatever has arrived every ``pause`` seconds
    and answers the complete requests in it, in order: so a pipeline reaches it whole."""

    pause: float = 0.05
    quiet: float = 0.01  # a read ends after this long with nothing more arriving
    answer_at_most: int = 0  # per connection, then close without a word (0: no limit)
    silent: bool = False  # read, never answer
    url: str = ""
    taken: list[str] = field(default_factory=list)  # ce-id/ce-type of each answered post
    most_at_once: int = 0  # most complete requests found unanswered on one connection
    reads: int = 0  # reads that found complete requests (a pipeline, or a part of one)
    connections: int = 0
    accepted_at: list[float] = field(default_factory=list)  # time.monotonic() of each
    lock: threading.Lock = field(default_factory=threading.Lock)


def _requests(buffer: bytes) -> tuple[list[dict[str, str]], bytes]:
    """The complete requests at the start of ``buffer`` (their headers) and the rest."""
    found = []
    while (end := buffer.find(b"\r\n\r\n")) >= 0:
        lines = buffer[:end].decode("latin-1").split("\r\n")[1:]
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        size = end + 4 + int(headers.get("content-length", "0"))
        if len(buffer) < size:
            break
        found.append(headers)
        buffer = buffer[size:]
    return found, buffer


@pytest.fixture
def raw_sink() -> Iterator[RawSink]:
    state = RawSink()
    listener = socket.create_server(("127.0.0.1", 0))
    state.url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        buffer, answered = b"", 0
        with conn:
            while not stop.is_set():
                stop.wait(state.pause)
                conn.settimeout(state.quiet)
                try:
                    while chunk := conn.recv(1 << 16):
                        buffer += chunk
                except TimeoutError:
                    pass
                except OSError:
                    return
                requests, buffer = _requests(buffer)
                if not requests or state.silent:
                    continue
                with state.lock:
                    state.most_at_once = max(state.most_at_once, len(requests))
                    state.reads += 1
                for headers in requests:
                    if state.answer_at_most and answered == state.answer_at_most:
                        conn.close()  # no answer, no "connection: close": a crash
                        return
                    with state.lock:
                        state.taken.append(f"{headers['ce-id']}/{headers['ce-type']}")
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    answered += 1

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with state.lock:
                state.connections += 1
                state.accepted_at.append(time.monotonic())
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield state
    stop.set()
    thread.join(5)
    listener.close()


def _every_event(ids: list[str]) -> list[str]:
    return sorted(f"{i}/{t}" for i in ids for t in (REQUEST_TYPE, RESPONSE_TYPE))


@pytest.mark.parametrize(("depth", "most"), [(16, 16), (1, 1)])
def test_events_go_pipelined_up_to_the_depth_on_one_connection(
    raw_sink: RawSink, depth: int, most: int
) -> None:
    """Each event is its own post (the agent's headers), written with the others queued,
    at most ``pipeline_events`` unanswered at once; 1 posts one at a time."""
    emitter = PayloadEmitter(raw_sink.url, IDENTITY, senders=1, pipeline_events=depth)
    ids = [f"p-{i}" for i in range(40)]
    assert asyncio.run(_emit_all(emitter, ids)) == 0
    assert (emitter.sent, emitter.failed, emitter.dropped) == (80, 0, 0)
    assert sorted(raw_sink.taken) == _every_event(ids)
    assert raw_sink.most_at_once == most
    assert raw_sink.connections == 1


def _emit_spaced(emitter: PayloadEmitter, ids: list[str], gap: float) -> int:
    """Emit an inference per id, ``gap`` seconds apart, then close: the events left."""

    async def spaced() -> int:
        for event_id in ids:
            emitter.emit(event_id, {"instances": [[1, "a"]]}, {"predictions": [0.5]})
            await asyncio.sleep(gap)
        return await emitter.close(30)

    return asyncio.run(spaced())


def test_a_light_load_shares_one_post_at_a_time_and_a_backlog_spreads(
    raw_sink: RawSink,
) -> None:
    """With 16 senders, inferences arriving every 5 ms while the logger answers within
    50 ms go in few long pipelines (one post on its way at a time), not one small post per
    inference from whichever sender was idle; a burst of many whole posts opens connections
    at once (a Service spreads them over logger pods)."""
    emitter = PayloadEmitter(raw_sink.url, IDENTITY, senders=16, pipeline_events=128)
    ids = [f"l-{i}" for i in range(100)]
    assert _emit_spaced(emitter, ids, 0.005) == 0
    assert (emitter.sent, emitter.failed) == (200, 0)
    assert sorted(raw_sink.taken) == _every_event(ids)
    assert raw_sink.reads <= 40, raw_sink.reads

    raw_sink.taken.clear()
    raw_sink.accepted_at.clear()
    raw_sink.pause = 0.5
    burst = PayloadEmitter(raw_sink.url, IDENTITY, senders=16, pipeline_events=16)
    ids = [f"b-{i}" for i in range(200)]

    async def backlog() -> tuple[int, float]:
        for event_id in ids[:2]:  # one post on its way, the next sender waiting in turn
            burst.emit(event_id, {"instances": [[1, "a"]]}, {"predictions": [0.5]})
            await asyncio.sleep(0.05)
        started = time.monotonic()
        for event_id in ids[2:]:  # many whole posts queued while the first is unanswered
            burst.emit(event_id, {"instances": [[1, "a"]]}, {"predictions": [0.5]})
        return await burst.close(30), started

    left, started = asyncio.run(backlog())
    assert left == 0
    assert sorted(raw_sink.taken) == _every_event(ids)
    # waiting for the first answer (0.5 s) would open no connection this soon
    opened = [t - started for t in raw_sink.accepted_at]
    assert sum(0 <= t < 0.2 for t in opened) >= 3, opened


def test_posts_linger_for_more_inferences_unless_a_whole_post_is_queued(
    raw_sink: RawSink,
) -> None:
    """A logger that answers within a few ms: inferences 30 ms apart go as one post each when
    posts do not linger, as a few posts with a 0.5 s linger (the predictor's cost is mostly per
    post); a whole post queued goes at once however long the linger. (Batches take their
    turns in the same ``_next``.)"""
    raw_sink.pause = raw_sink.quiet = 0.001

    def reads_for(linger: float) -> int:
        raw_sink.reads = 0
        emitter = PayloadEmitter(raw_sink.url, IDENTITY, senders=16, linger=linger)
        assert _emit_spaced(emitter, [f"g{linger}-{i}" for i in range(30)], 0.03) == 0
        assert (emitter.sent, emitter.failed) == (60, 0)
        return raw_sink.reads

    at_once, lingering = reads_for(0), reads_for(0.5)
    assert at_once >= 20, at_once
    assert lingering <= 10, lingering
    assert len(raw_sink.taken) == 120

    raw_sink.taken.clear()
    slow = PayloadEmitter(raw_sink.url, IDENTITY, senders=4, pipeline_events=16, linger=10)
    ids = [f"w-{i}" for i in range(8 * 5)]  # five whole posts

    async def whole_posts() -> tuple[list[str], int]:
        for event_id in ids:
            slow.emit(event_id, {"instances": [[1, "a"]]}, {"predictions": [0.5]})
        for _ in range(300):  # 3 s: the posts go long before the linger runs out
            if len(raw_sink.taken) == 2 * len(ids):
                break
            await asyncio.sleep(0.01)
        return sorted(raw_sink.taken), await slow.close(30)

    taken_before_close, left = asyncio.run(whole_posts())
    assert left == 0
    assert taken_before_close == _every_event(ids)


def test_emitter_linger_option_is_checked() -> None:
    for bad in (-0.1, 10.5, float("nan"), True, "1"):
        with pytest.raises(ConfigError, match="logger_linger_seconds"):
            PayloadEmitter("http://x/", IDENTITY, linger=bad)  # type: ignore[arg-type]
    assert PayloadEmitter("http://x/", IDENTITY, linger=0).linger == 0.0


def test_a_connection_that_dies_in_a_pipeline_loses_no_event(raw_sink: RawSink) -> None:
    """The server answers 5 posts of a connection and closes it with the rest of the
    pipeline unread (a crash: no ``connection: close``); the unanswered posts go again on a
    new connection, and every event is taken exactly once."""
    raw_sink.answer_at_most = 5
    emitter = PayloadEmitter(raw_sink.url, IDENTITY, senders=1, pipeline_events=16)
    ids = [f"d-{i}" for i in range(20)]
    assert asyncio.run(_emit_all(emitter, ids)) == 0
    assert (emitter.sent, emitter.failed) == (40, 0)
    assert sorted(raw_sink.taken) == _every_event(ids)
    assert raw_sink.connections >= 40 // 5


def test_a_logger_that_never_answers_costs_the_events_after_the_timeout(
    raw_sink: RawSink,
) -> None:
    raw_sink.silent = True
    emitter = PayloadEmitter(raw_sink.url, IDENTITY, senders=1, timeout=0.5)
    assert asyncio.run(_emit_all(emitter, ["s1", "s2", "s3"])) == 0
    assert (emitter.sent, emitter.failed, emitter.dropped) == (0, 6, 0)


def test_emitter_pipeline_option_is_checked() -> None:
    identity = EventIdentity("m")
    for bad in (0, 1001, True, 2.5):
        with pytest.raises(ConfigError, match="logger_pipeline_events"):
            PayloadEmitter("http://x/", identity, pipeline_events=bad)  # type: ignore[arg-type]
    assert PayloadEmitter("http://x/", identity, pipeline_events=8).pipeline_depth == 8
