"""Media URLs against misbehaving local servers: connect/read timeouts, the slow-drip deadline, no proxies.

Every server here listens on 127.0.0.1 (settings allow private addresses for that);
nothing connects off the machine.
"""

from __future__ import annotations

import socket
import threading

import pytest
from conftest import MediaServer

from helpers.config import Settings
from helpers.errors import RequestError
from helpers.media import fetch_url

TIMEOUT = 0.3  # media_timeout: the slow-drip deadline is 3 x this


class StallingServer:
    """A raw TCP server that reads the request, sends ``head`` and then drips ``body`` one byte at a time.

    ``pause`` is the server's own pace between bytes (a misbehaving server, not test
    synchronisation); ``sent`` counts the body bytes it managed to send before the
    client hung up. With ``body=None`` it sends nothing at all until closed.
    """

    def __init__(self, head: bytes = b"", body: bytes | None = None, pause: float = 0.0) -> None:
        self.head, self.body, self.pause = head, body, pause
        self.sent = 0
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.recv(65536)
            if self.body is None:
                self.closed.wait(60)  # hold the connection, say nothing
                return
            try:
                connection.sendall(self.head)
                for byte in self.body:
                    connection.sendall(bytes([byte]))
                    self.sent += 1
                    if self.closed.wait(self.pause):
                        return
            except OSError:  # the client hung up
                return

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/picture.png"

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env({}, model="demo", allow_private_network_media=True, media_timeout=TIMEOUT)


def test_a_server_that_never_answers_meets_the_read_timeout(settings, monkeypatch):
    from urllib3.util import connection

    connect_timeouts = []
    real_create_connection = connection.create_connection

    def create_connection(address, timeout, *args, **kwargs):
        connect_timeouts.append(timeout)
        return real_create_connection(address, timeout, *args, **kwargs)

    monkeypatch.setattr(connection, "create_connection", create_connection)
    server = StallingServer(body=None)
    try:
        with pytest.raises(RequestError, match=f"timed out after {TIMEOUT:g} s") as caught:
            fetch_url(server.url(), settings)
    finally:
        server.close()
    assert caught.value.code == "media_fetch_failed"
    assert connect_timeouts == [TIMEOUT]  # the connect timeout is the same setting


def test_a_server_that_drips_its_body_meets_the_deadline_not_just_the_read_timeout(settings):
    body = b"x" * 400  # 400 bytes at one per 0.05 s: 20 s, each byte well inside the read timeout
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 400\r\n\r\n"
    server = StallingServer(head, body, pause=0.05)
    try:
        with pytest.raises(RequestError, match="too slow") as caught:
            fetch_url(server.url(), settings)
    finally:
        server.close()
    assert caught.value.code == "media_fetch_failed"
    assert server.sent < len(body) // 2  # given up at the deadline (3 x 0.3 s), long before the end


def test_proxy_variables_are_ignored_for_media_urls(settings, monkeypatch):
    """A proxy would connect on the server's behalf, past the address check (trust_env=False)."""
    proxy, media = MediaServer(), MediaServer()
    try:
        url = media.add("/cat.png", b"picture bytes", content_type="image/png")
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy.url(""))
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        assert fetch_url(url, settings) == b"picture bytes"
    finally:
        proxy.close()
        media.close()
    assert media.hits == ["/cat.png"] and proxy.hits == []
