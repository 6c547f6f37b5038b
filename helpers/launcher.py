"""Start the API server in the background from a notebook or a test, wait for it, and stop it.

    server = start_server(model="demo", port=6006)   # returns once /health says ok
    ...                                              # call server.base_url
    stop_server(server)                              # TERM, then KILL; the port is free again

The server runs in its own process group with a log file and a pid file under
``build/server/``. Starting again on the same port first stops a server that
an earlier kernel left behind (found through its pid file); a port held by
anything else is refused with a clear message.

:func:`start_process` does the same for any HTTP server command that answers
``GET /health`` (``helpers.vllm_server`` starts vLLM with it); the pid file
remembers a marker from the command line, so only that program is ever
stopped as a leftover.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from helpers.client import urlopen
from helpers.config import Settings
from helpers.costs import MemoryProbe, check_gpu_memory, default_probe

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = REPO_ROOT / "build" / "server"


@dataclass
class ServerProcess:
    """A server started by :func:`start_server`."""

    pid: int
    host: str
    port: int
    log_path: Path
    pid_path: Path
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log yet)"


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for tests and parallel notebooks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def health(base_url: str, timeout: float = 2.0) -> tuple[int, dict]:
    """(status code, body) of ``GET /health``; (0, {}) when nothing answers. No proxy on loopback."""
    try:
        with urlopen(f"{base_url}/health", timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


def _pid_path(port: int, run_dir: Path) -> Path:
    return run_dir / f"server-{port}.pid"


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that has exited: reap the zombie
            return False
    except ChildProcessError:
        pass  # not our child (e.g. started by an earlier kernel)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


SERVER_MARKER = "helpers.server"


def _is_our_server(pid: int, marker: str = SERVER_MARKER) -> bool:
    """True when ``pid`` runs a command line that contains ``marker`` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return _alive(pid)  # no /proc (macOS): trust the pid file
    return marker.encode() in cmdline


def choose_port(preferred: int = 6006, host: str = "127.0.0.1", run_dir: Path = RUN_DIR) -> int:
    """``preferred`` if free (after stopping a server an earlier kernel left there), else a free port."""
    stop_leftover(preferred, run_dir)
    return preferred if port_is_free(host, preferred) else free_port(host)


def stop_leftover(port: int, run_dir: Path = RUN_DIR) -> bool:
    """Stop a server an earlier kernel started on ``port`` (per its pid file). True if one was stopped."""
    pid_path = _pid_path(port, run_dir)
    if not pid_path.exists():
        return False
    try:
        fields = pid_path.read_text().split()
        pid = int(fields[0])
    except (ValueError, IndexError):
        pid_path.unlink(missing_ok=True)
        return False
    marker = fields[1] if len(fields) > 1 else SERVER_MARKER  # pid files without a marker: ours
    stopped = False
    if _alive(pid) and _is_our_server(pid, marker):
        _terminate_group(pid)
        stopped = True
    pid_path.unlink(missing_ok=True)
    return stopped


def start_server(
    model: str | None = None,
    port: int = 6006,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
    run_dir: Path = RUN_DIR,
    gpu_probe: MemoryProbe | str | None = "nvidia-smi",
) -> ServerProcess:
    """Start ``python -m helpers.server`` in the background and wait until ``/health`` is ok.

    Raises ``RuntimeError`` with the end of the server log if it exits or is not
    ready within ``timeout`` seconds, and when ``port`` is taken by another program;
    :class:`helpers.costs.NotEnoughGPUMemory` (with the cause and the fix) before
    starting anything when the GPU has too little free memory for the model.
    ``gpu_probe`` reads (free, total) GPU bytes; the default asks ``nvidia-smi`` about
    the configured device (so the calling kernel creates no CUDA context of its own),
    or the simulated card (``QWEN3VL_SIMULATE_GPU``); None skips the check.
    """
    if stop_leftover(port, run_dir):  # a server an earlier kernel left must not count as "someone else's"
        _wait_port_free(host, port, 10.0)
    if gpu_probe is not None:
        overrides = {"model": model} if model else {}
        settings = Settings.from_env({**os.environ, **(env or {})}, **overrides)
        settings = _with_flags(settings, extra_args)
        if settings.device != "cpu":
            probe = default_probe(settings, use_torch=False) if isinstance(gpu_probe, str) else gpu_probe
            check_gpu_memory(settings, probe)
    command = [sys.executable, "-m", "helpers.server", "--host", host, "--port", str(port), *extra_args]
    if model:
        command += ["--model", model]
    return start_process(command, port, host, env=env, timeout=timeout, run_dir=run_dir)


def _with_flags(settings: Settings, extra_args: Sequence[str]) -> Settings:
    """``settings`` with the server flags in ``extra_args`` applied (what the server will run with)."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    Settings.add_arguments(parser)
    known, _ = parser.parse_known_args(list(extra_args))
    given = {k: v for k, v in vars(known).items() if v is not None}
    return settings.replace(**given) if given else settings


def start_process(
    command: Sequence[str],
    port: int,
    host: str = "127.0.0.1",
    marker: str = SERVER_MARKER,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
    run_dir: Path = RUN_DIR,
    log_name: str = "server",
    report: Callable[[str], None] | None = print,
) -> ServerProcess:
    """Start ``command`` (an HTTP server listening on ``host:port``) in the background; wait for ``/health``.

    ``marker`` is a piece of ``command`` that identifies the program (e.g.
    ``vllm.entrypoints.openai.api_server``): it is written to the pid file so a
    later start on the same port stops a leftover only if it is still that program.
    ``env`` is added to this process's environment. The log is ``<run_dir>/<log_name>-<port>.log``.
    ``report`` receives the progress lines printed while waiting (None: silent).
    """
    if marker not in " ".join(command) or any(c.isspace() for c in marker):
        raise ValueError(f"marker {marker!r} must be one word of the command line")
    run_dir.mkdir(parents=True, exist_ok=True)
    if stop_leftover(port, run_dir):
        print(f"stopped a server left on port {port} by an earlier run")
        _wait_port_free(host, port, 10.0)  # only a server we just stopped is worth waiting for
    if not port_is_free(host, port):
        raise RuntimeError(
            f"port {port} is already used by another program; stop it (e.g. `fuser -k {port}/tcp`) "
            f"or choose another port"
        )
    log_path = run_dir / f"{log_name}-{port}.log"
    child_env = {**os.environ, **(env or {})}
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            list(command),
            cwd=REPO_ROOT,
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopping it stops its children too
        )
    pid_path = _pid_path(port, run_dir)
    # "<pid>" for our own server (the format earlier kernels wrote), "<pid> <marker>" for others.
    pid_path.write_text(f"{process.pid}\n" if marker == SERVER_MARKER else f"{process.pid} {marker}\n")
    server = ServerProcess(process.pid, host, port, log_path, pid_path, process)
    try:
        wait_for_server(server, timeout, report=report)
    except BaseException:
        stop_server(server)
        raise
    return server


def wait_for_server(
    server: ServerProcess,
    timeout: float = 300.0,
    report: Callable[[str], None] | None = print,
    every: float = 10.0,
) -> dict:
    """Poll ``/health`` until it answers 200; raise with the log tail if the process dies or times out.

    While waiting, ``report`` gets a line at the start and then every ``every``
    seconds: elapsed time, what we wait for, the last log line and where the log
    is (a real model loads for a minute or more; vLLM for several). None: silent.
    """
    started = time.monotonic()
    deadline = started + timeout
    pause = 0.1
    next_report = started
    while True:
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError(
                f"the server exited with code {server.process.returncode} before it was ready.\n"
                f"--- last lines of {server.log_path} ---\n{server.log_tail()}"
            )
        status, body = health(server.base_url)
        now = time.monotonic()
        if status == 200:
            if report is not None and now - started >= every:
                report(f"✅ 服务已就绪：{server.base_url}（等了 {now - started:.0f} s）")
            return body
        if status == 503 and body.get("status") == "error":
            error = body.get("error")
            raise RuntimeError(f"the server could not load the model: {error}\n{server.log_tail()}")
        if now > deadline:
            raise RuntimeError(
                f"the server was not ready after {timeout:.0f} s.\n"
                f"--- last lines of {server.log_path} ---\n{server.log_tail()}"
            )
        if report is not None and now >= next_report:
            report(progress_line(server, now - started, status, body))
            next_report = now + every
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)  # a real model loads for a minute: do not flood its log


def progress_line(server: ServerProcess, elapsed: float, status: int, body: dict) -> str:
    """One line for a learner watching a start-up: how long, what we wait for, the log's last line."""
    answer = "还没有响应" if status == 0 else f"{status} {body.get('status', '')}".strip()
    last = next((line for line in reversed(server.log_tail(5).splitlines()) if line.strip()), "")
    last = f"；日志最后一行：{last.strip()[:120]}" if last and last != "(no log yet)" else ""
    return (
        f"⏳ 已等 {elapsed:.0f} s：等待 {server.base_url}/health 返回 200（现在：{answer}）"
        f"；日志 {server.log_path}{last}"
    )


def stop_server(server: ServerProcess | int, grace: float = 10.0) -> None:
    """Stop the server (TERM, then KILL after ``grace`` seconds) and wait until its port is free."""
    if isinstance(server, int):  # a port
        stop_leftover(server)
        return
    _terminate_group(server.pid, grace, server.process)
    server.pid_path.unlink(missing_ok=True)
    _wait_port_free(server.host, server.port, grace)


def _terminate_group(pid: int, grace: float = 10.0, process: subprocess.Popen | None = None) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if process is not None:
                if process.poll() is not None:
                    return
            elif not _alive(pid):
                return
            time.sleep(0.05)


def _wait_port_free(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not port_is_free(host, port) and time.monotonic() < deadline:
        time.sleep(0.1)
