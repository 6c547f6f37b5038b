"""README promises of the server that need a stand-in failure or its command line (in-process)."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from helpers import server as server_module
from helpers.server import create_app

TEXT = [{"role": "user", "content": "Hello, who are you?"}]


def test_an_error_mid_stream_ends_the_stream_with_an_openai_error_chunk(engine, monkeypatch):
    real_generate = engine.model.generate

    def generate_then_fail(*args, streamer, **kwargs):
        real_put, puts = streamer.put, []

        def put(value):  # the first put is the prompt; then one per token
            puts.append(1)
            if len(puts) > 4:
                raise RuntimeError("stand-in failure after three tokens")
            real_put(value)

        streamer.put = put
        return real_generate(*args, streamer=streamer, **kwargs)

    monkeypatch.setattr(engine.model, "generate", generate_then_fail)
    body = {"model": "demo", "messages": TEXT, "max_tokens": 32, "temperature": 0, "stream": True}
    with TestClient(create_app(engine=engine)) as client:
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200  # the stream had begun: the error travels inside it
        lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        error = json.loads(lines[-2])["error"]
        assert set(error) == {"message", "type", "param", "code"} and "generation" in error["message"]
        pieces = [json.loads(line)["choices"][0]["delta"].get("content") for line in lines[1:-2]]
        assert len(pieces) == 3 and all(pieces)  # what was generated before the failure arrived
        assert not any(json.loads(line)["choices"][0].get("finish_reason") for line in lines[1:-2])
        monkeypatch.setattr(engine.model, "generate", real_generate)
        assert client.post("/v1/chat/completions", json={**body, "stream": False}).status_code == 200


@pytest.mark.parametrize(
    ("args", "warned"),
    [
        (["--host", "0.0.0.0"], True),
        (["--host", "0.0.0.0", "--api-key", "k"], False),
        (["--host", "127.0.0.1"], False),
    ],
    ids=["all-interfaces-without-key", "with-key", "loopback"],
)
def test_listening_beyond_this_machine_without_a_key_is_warned_about(monkeypatch, caplog, args, warned):
    started = []
    monkeypatch.setattr(server_module.GracefulServer, "run", lambda self: started.append(self.config))
    with caplog.at_level(logging.WARNING, logger="qwen3vl.server"):
        server_module.main([*args, "--model", "demo", "--port", "6123", "--no-ui"])
    (config,) = started  # main went as far as starting uvicorn (stood in for here: nothing listens)
    assert config.host == args[1]
    warnings = [r.getMessage() for r in caplog.records if "without --api-key" in r.getMessage()]
    assert bool(warnings) == warned, warnings


def test_a_slot_granted_after_its_client_left_is_given_back_as_one_cancelled_request():
    import asyncio

    from helpers.server import GenerationQueue

    async def scenario() -> dict:
        queue = GenerationQueue(max_waiting=2)
        queue.reserve()
        await queue.acquire()  # granted just as the client left (the rare race in Service.start)
        queue.give_back()
        queue.reserve()
        await asyncio.wait_for(queue.acquire(), 5)  # the model is free again for the next request
        return queue.stats()

    stats = asyncio.run(scenario())
    assert (stats["running"], stats["waiting"], stats["completed"], stats["cancelled"]) == (1, 0, 0, 1)
    assert stats["seconds_per_request"] == 0  # nothing was generated: no service time recorded
