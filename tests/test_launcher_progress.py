"""Waiting for a server says what it waits for, how long it has waited and where the log is."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers import launcher

# A stand-in server: writes a loading line to its log, answers /health with 503
# "loading" until a flag file exists, then 200. Real processes, real HTTP.
SLOW_SERVER = textwrap.dedent(
    """
    import http.server, json, pathlib, sys
    flag = pathlib.Path(sys.argv[2])
    print("Loading checkpoint shards: 1/2", flush=True)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ready = flag.exists()
            body = json.dumps({"status": "ok" if ready else "loading"}).encode()
            self.send_response(200 if ready else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)


def test_waiting_reports_elapsed_time_what_it_waits_for_the_log_and_its_last_line(tmp_path):
    port = launcher.free_port()
    script, flag, log_path = tmp_path / "slow.py", tmp_path / "ready", tmp_path / "slow.log"
    script.write_text(SLOW_SERVER)
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-u", str(script), str(port), str(flag)], stdout=log, stderr=subprocess.STDOUT
        )
    server = launcher.ServerProcess(process.pid, "127.0.0.1", port, log_path, tmp_path / "slow.pid", process)
    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        if "Loading checkpoint shards" in line:
            flag.touch()  # the learner saw the loading line: now let the server become ready

    try:
        body = launcher.wait_for_server(server, timeout=120, report=report, every=0)
    finally:
        process.kill()
        process.wait()
    assert body == {"status": "ok"}
    waiting = [line for line in lines if line.startswith("⏳")]
    assert waiting, "nothing was reported while waiting"
    last = waiting[-1]
    assert "已等" in last and f"{server.base_url}/health" in last and str(log_path) in last
    assert "Loading checkpoint shards: 1/2" in last
    assert any("503 loading" in line or "还没有响应" in line for line in waiting)
    assert lines[-1].startswith("✅") and server.base_url in lines[-1]


def test_a_silent_wait_reports_nothing(tmp_path):
    port = launcher.free_port()
    script, flag, log_path = tmp_path / "slow.py", tmp_path / "ready", tmp_path / "slow.log"
    script.write_text(SLOW_SERVER)
    flag.touch()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-u", str(script), str(port), str(flag)], stdout=log)
    server = launcher.ServerProcess(process.pid, "127.0.0.1", port, log_path, tmp_path / "slow.pid", process)
    try:
        assert launcher.wait_for_server(server, timeout=120, report=None)["status"] == "ok"
    finally:
        process.kill()
        process.wait()
