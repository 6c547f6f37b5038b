"""The background launcher: start, wait, refuse a busy port, clean up after an earlier kernel, stop."""

from __future__ import annotations

import socket

import pytest

from helpers import launcher


def test_a_server_that_dies_at_start_raises_with_its_log_tail(tmp_path):
    port = launcher.free_port()
    with pytest.raises(RuntimeError, match="No model weights") as info:
        launcher.start_server(
            model=str(tmp_path / "no-such-model"),
            port=port,
            run_dir=tmp_path,
            env={"QWEN3VL_MODEL_ROOT": str(tmp_path)},
        )
    assert "exited with code 2" in str(info.value)
    assert launcher.port_is_free("127.0.0.1", port)


def test_a_port_held_by_another_program_is_refused_clearly_without_waiting(tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(launcher, "_wait_port_free", lambda *args: waits.append(args))
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} is already used by another program"):
            launcher.start_server(model="demo", port=port, run_dir=tmp_path)
    assert waits == []  # nothing of ours was stopped there: nothing to wait for


def test_restart_stops_and_reaps_a_server_left_by_an_earlier_kernel_then_stop_frees_the_port(tmp_path):
    port = launcher.free_port()
    first = launcher.start_server(model="demo", port=port, run_dir=tmp_path, timeout=120)
    assert launcher.health(first.base_url)[0] == 200
    # A new kernel knows nothing about `first` except the pid file on disk.
    second = launcher.start_server(model="demo", port=port, run_dir=tmp_path, timeout=120)
    try:
        assert second.pid != first.pid
        # The leftover was stopped (TERM) through its pid file and, being our own child, reaped:
        # a zombie that still looks alive once cost a 20 s wait.
        assert not launcher._alive(first.pid)
        status, body = launcher.health(second.base_url)
        assert status == 200 and body["status"] == "ok"
        assert (tmp_path / f"server-{port}.pid").read_text().strip() == str(second.pid)
        assert "Uvicorn running" in second.log_tail() or "Application startup complete" in second.log_tail()
    finally:
        launcher.stop_server(second)
    assert second.process.poll() is not None
    assert launcher.port_is_free("127.0.0.1", port)
    assert not (tmp_path / f"server-{port}.pid").exists()


def test_choose_port_prefers_the_given_port_and_falls_back_when_busy(tmp_path):
    port = launcher.free_port()
    assert launcher.choose_port(port, run_dir=tmp_path) == port
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        chosen = launcher.choose_port(port, run_dir=tmp_path)
    assert chosen != port and launcher.port_is_free("127.0.0.1", chosen)
