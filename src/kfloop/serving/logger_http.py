"""The logger's HTTP protocol: uvicorn's httptools protocol, with ``POST /`` taken in the
parser's callbacks.

The KServe agent posts one CloudEvent per request and one per response, so the logger's cost
per event is mostly HTTP. Under ``wrk`` (1-row v2 events), uvicorn's request cycle for each
post (an ``asyncio.Task``, the ASGI scope, ``receive``/``send`` messages, the proxy-headers
middleware) took about half of the logger's CPU, more than parsing and pairing the event.
Taking the event is synchronous (:func:`kfloop.serving.logger.take_post`), so here the body
is collected as httptools hands it over and the answer is written when the message is
complete, with no task. Everything else (``/metrics``, ``/healthz``, ``/readyz``, other
methods and paths, ``Expect: 100-continue``, pipelined requests behind one still being
answered) goes through uvicorn's ASGI cycle to :class:`kfloop.serving.logger.EventsFront`,
which answers ``POST /`` the same way.

Answers are those of :class:`~kfloop.serving.logger.EventsFront`: 200 (empty for one event),
400 naming the problem, 413 over ``max_body_bytes`` (by ``content-length`` before the body is
read, or while it arrives; the rest of the body is read and dropped, as uvicorn does), 429/503
with ``Retry-After: 1``. A client that goes away before its body is complete has nothing
taken. On a graceful shutdown a post already being received is answered, then the
connection is closed; idle connections are closed at once (as uvicorn does).
"""

from __future__ import annotations

import http
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kfloop.serving.logger import PayloadLogger, answer_body, take_post, too_large

_OK_EMPTY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


def response_parts(
    status: int, answer: dict[str, Any] | None, default_headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, bytes]:
    """The HTTP/1.1 head (without the blank line that ends it, so ``connection: close`` can
    still be added) and body for an answer of :func:`take_post`."""
    parts = [_OK_EMPTY if answer is None else _status_line(status)]
    parts += [b"%s: %s\r\n" % pair for pair in default_headers]
    if answer is not None:
        body = answer_body(answer)
        parts.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        if status in (429, 503):
            parts.append(b"retry-after: 1\r\n")
        return b"".join(parts), body
    return b"".join(parts), b""


def events_protocol(service: PayloadLogger) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` of a logger serving ``service``."""

    # The usual answer, an empty 200 on a kept connection, built once per list of uvicorn's
    # default headers (a new list each second, for its date header), not once per post.
    ok_message: list[Any] = [None, b""]

    class EventsProtocol(HttpToolsProtocol):
        """One connection; see the module docs."""

        _post: list[bytes] | None = None  # the body so far of a POST / taken here
        _post_size = 0
        _post_answered = False  # refused with 413 before its body ended
        _keep_alive = True
        _closing = False
        _held: list[bytes] | None = None  # answers of this read not yet written

        def data_received(self, data: bytes) -> None:
            # The answers to the posts complete in one read go in one write: a client that
            # pipelines (kfloop's predictor does) costs one send() per read, not per event.
            self._held = []
            try:
                super().data_received(data)
            finally:
                self._write_held()
                self._held = None

        def _write_held(self) -> None:
            held = self._held
            if held:
                self._held = []
                if not self.transport.is_closing():
                    self.transport.write(held[0] if len(held) == 1 else b"".join(held))

        def send_400_response(self, msg: str) -> None:
            self._write_held()  # the posts before the unreadable bytes are answered first
            super().send_400_response(msg)

        def on_message_begin(self) -> None:
            # What uvicorn's on_message_begin resets for the parser callbacks; its ASGI scope
            # is built only for a message that goes to uvicorn (_to_uvicorn).
            self.url = b""
            self.expect_100_continue = False
            self.headers: list[tuple[bytes, bytes]] = []
            self._post = None

        def _to_uvicorn(self) -> None:
            """Build the message's ASGI scope as uvicorn does at the message's start, keeping
            what the parser callbacks collected since, and let uvicorn go on with it."""
            self._write_held()  # uvicorn answers this one after the posts before it
            url, headers, expect = self.url, self.headers, self.expect_100_continue
            super().on_message_begin()
            self.url, self.expect_100_continue = url, expect
            self.headers.extend(headers)  # the list the scope holds
            super().on_headers_complete()

        def on_headers_complete(self) -> None:
            parser = self.parser
            if (
                self.url != b"/"
                or parser.get_method() != b"POST"
                or self.expect_100_continue
                or parser.should_upgrade()
                or self.pipeline
                or (self.cycle is not None and not self.cycle.response_complete)
            ):
                self._to_uvicorn()
                return
            self._post = []
            self._post_size = 0
            self._post_answered = False
            self._keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
            limit = service.config.max_body_bytes
            for name, value in self.headers:
                if name == b"content-length":
                    if value.isdigit() and int(value) > limit:
                        self._answer_early(too_large(service, value.decode()))
                    break

        def on_body(self, body: bytes) -> None:
            post = self._post
            if post is None:
                super().on_body(body)
                return
            if self._post_answered:
                return
            self._post_size += len(body)
            if self._post_size > service.config.max_body_bytes:
                self._answer_early(too_large(service))
                post.clear()
                return
            post.append(body)

        def on_message_complete(self) -> None:
            post = self._post
            if post is None:
                super().on_message_complete()
                return
            self._post = None
            if not self._post_answered:
                # uvicorn's on_header gives the names in lower case, as take_post wants them
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}
                body = post[0] if len(post) == 1 else b"".join(post)
                status, answer = take_post(service, headers, body)
                self._write(status, answer)
            self.server_state.total_requests += 1
            if not self._keep_alive or self._closing:
                self._write_held()
                self.transport.close()
            elif not self.transport.is_closing():
                # Pipelined posts end several messages in one read: one timer, the last
                # one's (an earlier one left running closed a busy connection 5 s later).
                self._unset_keepalive_if_required()
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )

        def _answer_early(self, answer: dict[str, Any]) -> None:
            self._post_answered = True
            self._write(413, answer)

        def _write(self, status: int, answer: dict[str, Any] | None) -> None:
            if self.transport.is_closing():
                return
            default_headers = self.server_state.default_headers
            keep = self._keep_alive and not self._closing
            if answer is None and keep and default_headers is ok_message[0]:
                message = ok_message[1]
            else:
                head, body = response_parts(status, answer, default_headers)
                close = b"" if keep else b"connection: close\r\n"
                message = b"".join((head, close, b"\r\n", body))
                if answer is None and keep:
                    ok_message[:] = [default_headers, message]
            if self._held is not None:
                self._held.append(message)
            else:
                self.transport.write(message)

        def shutdown(self) -> None:
            if self._post is not None:  # a post on its way: answer it, then close
                self._closing = True
                return
            super().shutdown()

    return EventsProtocol
