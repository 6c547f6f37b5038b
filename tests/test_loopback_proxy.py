"""Loopback traffic never goes through a proxy (AutoDL's ``network_turbo`` sets ``http_proxy`` for the shell).

A real demo server is started, and every client talks to it, while the
environment points ``http_proxy`` / ``HTTP_PROXY`` at a closed 127.0.0.1 port
and no ``no_proxy`` is set: a client that honoured the proxy would fail to
connect. The first test proves that the proxy is in effect for a plain client.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import requests

from helpers import bench, launcher, original_clients
from helpers.client import http_session, is_loopback, openai_client, urlopen


@pytest.fixture(scope="module")
def dead_proxy() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens: every request sent to it fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def behind_proxy(dead_proxy) -> Iterator[None]:
    """The shell after ``source /etc/network_turbo``: a proxy for http and https, nothing exempt."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            patch.setenv(name, dead_proxy)
        for name in ("no_proxy", "NO_PROXY"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def server(behind_proxy, tmp_path_factory) -> Iterator[launcher.ServerProcess]:
    """Our server on the demo model, started (and health-checked by the launcher) behind the dead proxy."""
    started = launcher.start_server(
        model="demo",
        port=launcher.free_port(),
        extra_args=["--device", "cpu", "--log-level", "warning"],
        run_dir=tmp_path_factory.mktemp("run"),
    )
    yield started
    launcher.stop_server(started)


def test_a_plain_client_is_sent_to_the_proxy_and_fails(server):
    with pytest.raises(requests.exceptions.ProxyError):
        requests.get(f"{server.base_url}/health", timeout=10)


def test_the_launchers_health_check_reaches_the_server(server):
    # start_server already waited on /health through the same check.
    assert launcher.health(server.base_url)[0] == 200
    with urlopen(f"{server.base_url}/health", timeout=10) as response:
        assert response.status == 200


def test_the_openai_client_reaches_the_server(server):
    reply = openai_client(server.base_url).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0
    )
    assert reply.usage.completion_tokens <= 2


def test_the_bench_client_reaches_the_server(server):
    result = bench.concurrency_run(
        server.base_url, bench.text_messages(), concurrency=1, requests_total=1, max_tokens=2
    )
    assert result.requests == 1


def test_the_original_tutorials_scripts_reach_the_server(server, capsys):
    assert original_clients.test_health_check(server.base_url)
    assert original_clients.test_text_chat(server.base_url, max_tokens=2)
    assert original_clients.served_model_name(server.base_url) == "demo"
    assert "✅ 文本对话测试成功" in capsys.readouterr().out


def test_localhost_counts_as_loopback_and_other_hosts_keep_the_proxy():
    assert is_loopback("http://127.0.0.1:6006") and is_loopback("http://localhost:8000/v1")
    assert is_loopback("http://127.8.9.10:1") and is_loopback("http://[::1]:6006")
    assert not is_loopback("http://10.0.0.5:6006") and not is_loopback("https://u123-abc.autodl.com")
    assert http_session("http://10.0.0.5:6006").trust_env  # a workshop server elsewhere: the proxy applies
    assert not http_session("http://localhost:6006").trust_env
