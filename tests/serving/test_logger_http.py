"""The logger's HTTP protocol (:mod:`kfloop.serving.logger_http`) over raw sockets.

``POST /`` is answered in the parser's callbacks; everything else goes through uvicorn's ASGI
cycle. These tests drive a real ``kfloop logger`` with the byte sequences that clients send
(keep-alive, pipelining, HTTP/1.0, ``Expect: 100-continue``, chunked bodies, a client that
goes away, a shutdown during a post) and check the answers, their order, and what is in
Parquet afterwards.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.serving import test_logger
from tests.serving.test_logger import base_args, metric, traffic, v1_pair

model_dir = test_logger.model_dir  # fixtures
start_logger = test_logger.start_logger

Event = tuple[dict[str, str], bytes]


def request_bytes(
    event: Event,
    *,
    version: str = "HTTP/1.1",
    extra: Mapping[str, str] | None = None,
    body: bool = True,
) -> bytes:
    headers, data = event
    lines = [f"POST / {version}", "Host: logger"]
    lines += [f"{k}: {v}" for k, v in {**headers, **(extra or {})}.items()]
    if not any(k.lower() == "transfer-encoding" for k in (extra or {})):
        lines.append(f"Content-Length: {len(data)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + data if body else head


def read_response(f: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from a socket's file: status, headers (lower case), body."""
    status_line = f.readline()
    assert status_line, "connection closed before a response"
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = f.read(int(headers.get("content-length", "0")))
    return status, headers, body


def connect(server: Any) -> tuple[socket.socket, BinaryIO]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock, sock.makefile("rb")


def pair(eid: str, seed: int) -> list[Event]:
    rows, preds = traffic(1, seed=seed)
    return v1_pair(eid, rows[0], preds[0])


def logged(folder: Path) -> pa.Table:
    files = sorted(folder.rglob("*.parquet"))
    assert files, f"no Parquet under {folder}"
    return pa.concat_tables([pq.read_table(f) for f in files])


def test_posts_in_turn_and_pipelined_are_answered_in_order_and_logged(
    start_logger: Any, tmp_path: Path, model_dir: Path
) -> None:
    server = start_logger(*base_args(str(model_dir), str(tmp_path / "logs")))
    sock, f = connect(server)
    with sock, f:
        first = pair("p1", 1)
        for event in first:  # one at a time on a kept-alive connection
            sock.sendall(request_bytes(event))
            status, headers, body = read_response(f)
            assert (status, headers["content-length"], body) == (200, "0", b"")
            assert "connection" not in headers
        # pipelined: a GET between posts goes through the ASGI cycle; the post behind it
        # waits its turn
        second, third = pair("p2", 2), pair("p3", 3)
        sock.sendall(
            request_bytes(second[0])
            + request_bytes(second[1])
            + b"GET /healthz HTTP/1.1\r\nHost: logger\r\n\r\n"
            + request_bytes(third[0])
            + request_bytes(third[1])
        )
        answers = [read_response(f) for _ in range(5)]
    assert [a[0] for a in answers] == [200] * 5
    assert json.loads(answers[2][2]) == {"status": "alive"}
    assert [a[2] for a in answers[:2] + answers[3:]] == [b""] * 4
    assert server.terminate() == 0, server.log()
    table = logged(tmp_path / "logs")
    assert sorted(table.column("request_id").to_pylist()) == ["p1", "p2", "p3"]
    assert table.column("prediction").null_count == 0


def test_posts_pipelined_before_unreadable_bytes_are_answered_first_and_logged(
    start_logger: Any, tmp_path: Path, model_dir: Path
) -> None:
    """The answers to the posts of one read go out together after the read; a 400 for
    bytes that are not HTTP, in the same read, must still come after them."""
    server = start_logger(*base_args(str(model_dir), str(tmp_path / "logs")))
    sock, f = connect(server)
    events = pair("g1", 6) + pair("g2", 7)
    with sock, f:
        sock.sendall(b"".join(request_bytes(e) for e in events) + b"NOT HTTP\r\n\r\n")
        answers = [read_response(f)[0] for _ in range(len(events) + 1)]
        assert f.read() == b""  # closed after the 400
    assert answers == [200] * len(events) + [400]
    assert server.terminate() == 0, server.log()
    table = logged(tmp_path / "logs")
    assert sorted(table.column("request_id").to_pylist()) == ["g1", "g2"]


def test_a_busy_connection_outlives_the_keep_alive_timeout_after_pipelined_posts(
    start_logger: Any, tmp_path: Path, model_dir: Path
) -> None:
    """Posts pipelined in one read each armed a keep-alive timer and only the last was
    cancelled by the next read: 5 s (uvicorn's keep-alive timeout) after a burst the logger
    closed a connection that was never idle for more than 0.3 s. The answers' date header
    follows the clock (the usual answer is built once per second, not once per post)."""
    server = start_logger(*base_args(str(model_dir), str(tmp_path / "logs")))
    sock, f = connect(server)
    ids = []
    dates: list[tuple[float, str]] = []
    with sock, f:
        burst = [e for i in range(4) for e in pair(f"burst-{i}", i)]
        sock.sendall(b"".join(request_bytes(e) for e in burst))
        assert [read_response(f)[0] for _ in burst] == [200] * len(burst)
        deadline = time.monotonic() + 6.5  # past the 5 s keep-alive timeout
        n = 0
        while time.monotonic() < deadline:
            time.sleep(0.3)
            ids.append(f"late-{n}")
            for event in pair(ids[-1], 100 + n):
                sock.sendall(request_bytes(event))
                status, headers, _ = read_response(f)
                assert status == 200 and "connection" not in headers
                dates.append((time.time(), headers["date"]))
            n += 1
    assert server.terminate() == 0, server.log()
    table = logged(tmp_path / "logs")
    assert set(ids) <= set(table.column("request_id").to_pylist())
    for now, date in dates:  # HTTP dates have whole seconds; uvicorn renews them each second
        assert abs(now - parsedate_to_datetime(date).timestamp()) < 2.5, (now, date)
    assert len({date for _, date in dates}) >= 5


def test_http_1_0_is_answered_then_closed_and_expect_100_continue_is_honoured(
    start_logger: Any, tmp_path: Path, model_dir: Path
) -> None:
    server = start_logger(*base_args(str(model_dir), str(tmp_path / "logs")))
    request, response = pair("old", 4)
    sock, f = connect(server)
    with sock, f:
        sock.sendall(request_bytes(request, version="HTTP/1.0"))
        status, headers, _ = read_response(f)
        assert (status, headers["connection"]) == (200, "close")
        assert f.read() == b""  # the server closed the connection
    sock, f = connect(server)
    with sock, f:
        sock.sendall(request_bytes(response, extra={"Expect": "100-continue"}, body=False))
        assert f.readline().startswith(b"HTTP/1.1 100")
        assert f.readline() == b"\r\n"
        sock.sendall(response[1])
        assert read_response(f)[0] == 200
    assert server.terminate() == 0, server.log()
    table = logged(tmp_path / "logs")
    assert table.column("request_id").to_pylist() == ["old"]
    assert table.column("prediction").null_count == 0


def test_too_large_bodies_are_refused_and_the_connection_goes_on(
    start_logger: Any, tmp_path: Path, model_dir: Path
) -> None:
    server = start_logger(
        *base_args(str(model_dir), str(tmp_path / "logs"), "--max-body-bytes", "2000")
    )
    request, response = pair("fits", 5)
    sock, f = connect(server)
    with sock, f:
        # by content-length: answered before the body is sent
        big = (request[0], b"{" + b" " * 4998 + b"}")
        sock.sendall(request_bytes(big, body=False))
        status, _, body = read_response(f)
        assert status == 413
        assert json.loads(body)["error"] == "body of 5000 bytes is over the limit of 2000"
        sock.sendall(big[1])  # the client sends it anyway: read and dropped
        # chunked, no content-length: refused once the limit is passed while reading
        chunked = request_bytes(request, extra={"Transfer-Encoding": "chunked"}, body=False)
        chunk = b" " * 900
        sock.sendall(chunked + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)))
        status, _, body = read_response(f)
        assert (status, json.loads(body)["error"]) == (413, "body is over the limit of 2000 bytes")
        sock.sendall(b"0\r\n\r\n")
        for event in (request, response):  # the same connection takes the next posts
            sock.sendall(request_bytes(event))
            assert read_response(f)[0] == 200
    sock, f = connect(server)
    with sock, f:  # through uvicorn's ASGI cycle (Expect: 100-continue): the same answer
        sock.sendall(request_bytes(big, extra={"Expect": "100-continue"}, body=False))
        status, _, body = read_response(f)
        assert status == 413
        assert json.loads(body)["error"] == "body of 5000 bytes is over the limit of 2000"
    text = server.metrics()
    assert metric(text, "kfloop_logger_events_rejected_total", reason="too_large") == 3
    assert metric(text, "kfloop_logger_events_received_total", type="request") == 1
    assert server.terminate() == 0, server.log()
    assert logged(tmp_path / "logs").column("request_id").to_pylist() == ["fits"]


def test_a_client_gone_before_its_body_ended_has_nothing_taken(
    start_logger: Any, tmp_path: Path, model_dir: Path
) -> None:
    server = start_logger(*base_args(str(model_dir), str(tmp_path / "logs")))
    request, response = pair("cut", 6)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        whole = request_bytes(request)
        sock.sendall(whole[: len(whole) - 5])
        time.sleep(0.3)
    time.sleep(0.3)
    text = server.metrics()
    assert metric(text, "kfloop_logger_events_received_total", type="request") == 0
    assert server.post(request).status_code == 200  # sent again whole: taken once
    assert server.post(response).status_code == 200
    assert server.terminate() == 0, server.log()
    assert logged(tmp_path / "logs").column("request_id").to_pylist() == ["cut"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_post_arriving_at_shutdown_is_answered_logged_and_closed(
    start_logger: Any, tmp_path: Path, model_dir: Path, sig: signal.Signals
) -> None:
    server = start_logger(*base_args(str(model_dir), str(tmp_path / "logs")))
    request, _ = pair("late", 7)
    whole = request_bytes(request)
    idle, idle_f = connect(server)  # a kept-alive connection with nothing on it
    sock, f = connect(server)
    with sock, f, idle, idle_f:
        sock.sendall(whole[:-10])
        time.sleep(0.3)
        server.proc.send_signal(sig)
        assert idle_f.read() == b""  # closed at once
        time.sleep(0.5)
        assert server.proc.poll() is None  # still waiting for the post on its way
        sock.sendall(whole[-10:])
        status, headers, _ = read_response(f)
        assert (status, headers["connection"]) == (200, "close")
        assert f.read() == b""
    assert server.proc.wait(timeout=60) == 0, server.log()
    table = logged(tmp_path / "logs")  # written at shutdown, without its response
    assert table.column("request_id").to_pylist() == ["late"]
    assert table.column("prediction").to_pylist() == [None]
