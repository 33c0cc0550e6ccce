"""PayloadEmitter's own HTTP posting against a real loopback server (no kserve import).

The senders keep one HTTP/1.1 connection each; these tests make the server close connections,
answer errors, go away, and send ids that would break a header, and count what arrived.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kfloop.local.process import free_port
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


def test_a_refused_event_is_posted_again_until_taken(sink: Sink) -> None:
    """429/503 (the logger's buffer is full, or it restarts) is not a loss: one event at a
    time, as the agent posts, the event goes again after a back-off and is delivered."""
    sink.refuse_first = 3
    emitter = PayloadEmitter(sink.url, IDENTITY, senders=1)
    assert asyncio.run(_emit_all(emitter, ["r1", "r2"])) == 0
    assert (emitter.sent, emitter.failed) == (4, 0)
    delivered = [(h["ce-id"], h["ce-type"]) for h in [h for h, _ in sink.posts][3:]]
    assert delivered == [(i, t) for i in ("r1", "r2") for t in (REQUEST_TYPE, RESPONSE_TYPE)]
    assert [h["ce-id"] for h, _ in sink.posts[:3]] == ["r1", "r1", "r1"]  # the same event


def test_error_answers_and_a_missing_logger_are_counted_not_raised(sink: Sink) -> None:
    sink.status = 500  # not retried (429/503 are)
    emitter = PayloadEmitter(sink.url, IDENTITY, senders=2)
    assert asyncio.run(_emit_all(emitter, ["e1", "e2"])) == 0
    assert (emitter.sent, emitter.failed) == (0, 4)

    nobody = PayloadEmitter(f"http://127.0.0.1:{free_port()}/", IDENTITY, senders=2, timeout=2)
    assert asyncio.run(_emit_all(nobody, ["n1", "n2", "n3"])) == 0
    assert (nobody.sent, nobody.failed) == (0, 6)
