"""The FastAPI server: OpenAI-compatible chat completions for text, images and videos.

    python -m helpers.server --model demo                 # no GPU needed
    python -m helpers.server --host 0.0.0.0 --api-key KEY # exposed: always set a key

Routes: ``GET /health``, ``GET /metrics`` (Prometheus, :mod:`helpers.metrics`),
``GET /v1/models``, ``POST /v1/chat/completions``
(streaming with ``"stream": true``), ``POST /generate`` (the original
tutorial's route), ``/ui`` (the web chat page, :mod:`helpers.webui`; ``--no-ui``
turns it off) and ``GET /`` (a redirect to ``/ui``, or to ``/docs`` without it).

How it stays responsive: the model loads in a background thread after start-up
(``/health`` answers 503 until it is ready); media loading and generation run
in worker threads, never on the event loop; one generation runs at a time and
at most ``max_queue`` requests wait (more get 429); a client that disconnects
stops its generation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from helpers.config import ConfigError, ModelNotFoundError, Settings
from helpers.costs import NotEnoughGPUMemory, check_gpu_memory, format_bytes
from helpers.engine import ChatResult, ChatStream, Engine, SamplingParams
from helpers.errors import RequestError
from helpers.metrics import CONTENT_TYPE, HTTPMetrics, ServerMetrics
from helpers.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    DeltaMessage,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    ModelCard,
    ModelList,
    Usage,
    completion_id,
    error_body,
)
from helpers.reasoning import CONTENT, REASONING, ReasoningStream
from helpers.tools import ToolCallStream

logger = logging.getLogger("qwen3vl.server")


class ServerBusy(RequestError):
    """The queue is full (429) or the model is not ready (503)."""


# ------------------------------------------------------------------ model state
class ModelHolder:
    """The engine, loaded in a background thread so the server answers /health meanwhile."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.error: str | None = None
        self.started = time.time()
        self._thread: threading.Thread | None = None

    def start_loading(self, loader: Callable[[Settings], Engine]) -> None:
        if self.engine is not None or self._thread is not None:
            return

        def load() -> None:
            try:
                self.engine = loader(self.settings)
                logger.info("model ready:\n%s", self.engine.describe())
            except Exception as exc:  # reported by /health and every request
                self.error = f"{type(exc).__name__}: {exc}"
                logger.error("model failed to load: %s", self.error)

        self._thread = threading.Thread(target=load, name="qwen3vl-load", daemon=True)
        self._thread.start()

    def ready_engine(self) -> Engine:
        if self.engine is not None:
            return self.engine
        if self.error:
            raise ServerBusy(
                f"the model failed to load: {self.error}", status_code=503, code="model_load_failed"
            )
        raise ServerBusy(
            "the model is still loading; retry in a few seconds", status_code=503, code="model_loading"
        )


class GenerationQueue:
    """One generation at a time; at most ``max_waiting`` requests queue behind it.

    It counts what ``/health`` reports and tells ``metrics`` (``/metrics``) the same events.
    """

    def __init__(self, max_waiting: int, metrics: ServerMetrics | None = None) -> None:
        self.max_waiting = max_waiting
        self.metrics = metrics
        self.waiting = 0
        self.running = 0
        self.completed = 0
        self.cancelled = 0
        self.service_seconds = 0.0  # recent seconds per request (moving average), for Retry-After
        self._slot = asyncio.Semaphore(1)
        self._started_at: float | None = None

    def retry_after(self) -> int:
        """Seconds until a place is likely free: requests ahead x recent service time (at least 1)."""
        ahead = self.running + self.waiting
        return max(1, math.ceil(ahead * (self.service_seconds or 1.0)))

    def reserve(self) -> None:
        """Take a place in the queue now, or refuse with 429."""
        if self.running + self.waiting >= 1 + self.max_waiting:
            if self.metrics is not None:
                self.metrics.rejected()
            raise ServerBusy(
                f"the server is busy ({self.running} running, {self.waiting} waiting); retry later",
                status_code=429,
                code="queue_full",
            )
        self.waiting += 1

    def cancel_reservation(self, left: bool = False) -> None:
        """Give the place back: the request was refused (400...) or, with ``left``, its client went away."""
        self.waiting -= 1
        if left:
            self._count_cancelled()

    async def acquire(self) -> None:
        """Wait for the model (after :meth:`reserve`); a client that leaves meanwhile counts as cancelled."""
        self._loop = asyncio.get_running_loop()
        queued_at = time.monotonic()
        try:
            await self._slot.acquire()
        except asyncio.CancelledError:  # the client left, or the server is stopping
            self.waiting -= 1
            self._count_cancelled()
            raise
        self.waiting -= 1
        self.running += 1
        self._started_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.waited(self._started_at - queued_at)

    def _count_cancelled(self) -> None:
        self.cancelled += 1
        if self.metrics is not None:
            self.metrics.aborted()

    def release(self, stream: ChatStream | None = None) -> None:
        """Free the model; safe to call from any thread (the generation thread calls it)."""
        with contextlib.suppress(RuntimeError):  # the event loop is gone: the server is shutting down
            self._loop.call_soon_threadsafe(self._release, stream is not None and stream.stopped_early)

    def _release(self, stopped_early: bool) -> None:
        self.running -= 1
        if stopped_early:
            self._count_cancelled()
        else:
            self.completed += 1
            if self._started_at is not None:
                took = time.monotonic() - self._started_at
                self.service_seconds = (
                    took if not self.service_seconds else 0.7 * self.service_seconds + 0.3 * took
                )
        self._slot.release()

    def give_back(self) -> None:
        """Free a slot that was granted to a request whose client had already left (on the event loop).

        Nothing was generated for it: the leave counts as cancelled, and it adds no service time.
        """
        self.running -= 1
        self.cancelled += 1
        self._slot.release()

    def stats(self) -> dict[str, int]:
        return {
            "running": self.running,
            "waiting": self.waiting,
            "max_waiting": self.max_waiting,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "seconds_per_request": round(self.service_seconds, 3),
        }


# ------------------------------------------------------------------- middleware
class BodySizeLimit:
    """Refuse request bodies above ``max_bytes`` with 413, declared or streamed."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        message = f"request body is larger than {format_bytes(self.max_bytes)}"
        body = json.dumps(error_body(413, message, code="request_too_large")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(StarletteHTTPException):
    # An HTTPException, so FastAPI's body parsing passes it through unchanged.
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is larger than {format_bytes(max_bytes)}")


class GenerationStreamResponse(StreamingResponse):
    """A streaming response that stops its generation however the response ends."""

    def __init__(self, chat_stream: ChatStream, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chat_stream = chat_stream

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.chat_stream.cancel()


# ------------------------------------------------------------------------- app
def create_app(
    settings: Settings | None = None,
    engine: Engine | None = None,
    loader: Callable[[Settings], Engine] | None = None,
) -> FastAPI:
    """Build the app. Pass ``engine`` to serve an already loaded model (tests, notebooks)."""
    settings = settings or (engine.settings if engine else Settings.from_env())
    if engine is not None and engine.settings is not settings:
        engine = engine.with_settings(**vars(settings))  # one set of rules for server and engine
    holder = ModelHolder(settings, engine)
    metrics = ServerMetrics(settings.model)
    queue = GenerationQueue(settings.max_queue, metrics)
    metrics.watch(running=lambda: queue.running, waiting=lambda: queue.waiting, engine=lambda: holder.engine)
    service = Service(holder, queue, metrics)
    load = loader or (lambda s: Engine.load(s, verbose=False))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.loop = asyncio.get_running_loop()
        holder.start_loading(load)
        yield
        service.begin_shutdown()  # in-process users (TestClient) end here

    app = FastAPI(
        title="Qwen3-VL API",
        version="1.0.0",
        description="OpenAI-compatible chat completions for Qwen3-VL: text, images and videos.",
        lifespan=lifespan,
        responses={
            400: {"model": ErrorResponse},
            401: {"model": ErrorResponse},
            429: {"model": ErrorResponse},
        },
    )
    app.state.holder = holder
    app.state.queue = queue
    app.state.service = service
    app.state.metrics = metrics
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(HTTPMetrics, metrics=metrics)  # outermost: it sees the 413s too
    _install_error_handlers(app)

    async def check_api_key(request: Request) -> None:
        if not settings.api_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), settings.api_key):
            raise RequestError(
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                status_code=401,
                code="invalid_api_key",
            )

    protected = [Depends(check_api_key)]

    @app.get("/", summary="Where to start: the web chat page, or /docs without it")
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/" if app.state.ui else "/docs")

    @app.get("/health", summary="Readiness and what is loaded")
    async def health() -> JSONResponse:
        body: dict[str, Any] = {
            "model": settings.model,
            "demo": settings.is_demo,
            "uptime_s": round(time.time() - holder.started, 1),
            "queue": queue.stats(),
            "supported_formats": ["text", "image", "video"],
            "sampling_defaults": SamplingParams.defaults(settings),
        }
        if holder.engine is None:
            body["status"] = "error" if holder.error else "loading"
            if holder.error:
                body["error"] = holder.error
            return JSONResponse(body, status_code=503)
        body.update(_engine_facts(holder.engine))
        body["status"] = "ok"
        return JSONResponse(body)

    @app.get(
        "/metrics",
        dependencies=protected,
        response_class=Response,
        summary="Prometheus metrics (names as vLLM's where they measure the same thing; see helpers.metrics)",
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", response_model=ModelList, dependencies=protected, summary="The served model")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=settings.model, created=int(holder.started))])

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        dependencies=protected,
        summary="Chat completion (OpenAI compatible; set stream=true for server-sent events)",
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        if body.n not in (None, 1):
            raise RequestError("only n=1 is supported", param="n")
        stream = await service.start(request, body.messages, body.generation_params())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return GenerationStreamResponse(
                stream,
                service.sse(stream, settings.model, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        result = await service.finish(stream, request)
        # With tool calls, OpenAI sends content null when there is no text besides them.
        calls = [call.as_openai() for call in result.tool_calls] or None
        # Thinking models: content null when the answer never left the reasoning, as vLLM's parser says.
        empty_is_null = calls or stream.prepared.reasoning
        message = AssistantMessage(
            content=(result.text or None) if empty_is_null else result.text,
            tool_calls=calls,
            reasoning_content=result.reasoning,
            reasoning=result.reasoning,
        )
        return ChatCompletionResponse(
            model=settings.model,
            choices=[Choice(message=message, finish_reason=result.finish_reason)],
            usage=Usage(**result.usage.as_dict()),
            response=result.text,
        )

    @app.post(
        "/generate",
        response_model=GenerateResponse,
        dependencies=protected,
        summary="The original tutorial's route: returns only the answer text",
    )
    async def generate(body: GenerateRequest, request: Request) -> GenerateResponse:
        stream = await service.start(request, body.messages, body.generation_params())
        result = await service.finish(stream, request)
        return GenerateResponse(response=result.text)

    app.state.ui = False
    if settings.ui:  # Gradio is imported only here, so `--no-ui` starts as fast as before
        from helpers.webui import mount_ui

        app.state.ui = mount_ui(app, settings)
    return app


def _engine_facts(engine: Engine) -> dict[str, Any]:
    info = engine.info()
    facts = {k: info[k] for k in ("device", "dtype", "attention", "weights_gib", "max_model_len", "thinking")}
    facts["cuda_available"] = info["device"].startswith("cuda")
    facts["gpu"] = info.get("gpu")
    facts["gpu_memory"] = f"{info['gpu_memory_allocated_gib']} GiB allocated" if "gpu" in info else "N/A"
    return facts


class Service:
    """What the chat routes share: the model, the queue, the running answers, and shutdown."""

    def __init__(self, holder: ModelHolder, queue: GenerationQueue, metrics: ServerMetrics) -> None:
        self.holder = holder
        self.queue = queue
        self.metrics = metrics
        self.stopping = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.active: set[ChatStream] = set()

    def begin_shutdown(self) -> None:
        """Stop every answer and refuse waiting requests (safe from a signal handler or any thread).

        Open streams then end with an OpenAI error chunk; waiting and plain
        requests get a JSON 503, so nobody sees a bare connection reset.
        """
        for stream in list(self.active):
            stream.cancel()
        if self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.stopping.set)

    def _shutting_down(self) -> ServerBusy:
        return ServerBusy("the server is shutting down; retry shortly", status_code=503, code="shutting_down")

    async def start(self, request: Request, messages: list, raw_params: dict[str, Any]) -> ChatStream:
        """Validate, load media (in a thread), wait for the model, start generating.

        A client that leaves (or a shutdown) while media load or the request waits
        for the model ends it there: no prefill is spent on it, and it counts as cancelled.
        """
        arrived = time.perf_counter()
        if self.stopping.is_set():
            raise self._shutting_down()
        engine = self.holder.ready_engine()
        params = SamplingParams.build(engine.settings, **raw_params)
        self.queue.reserve()
        try:
            prepared = await self._unless_gone(run_in_threadpool(engine.prepare, messages, params), request)
            params = engine.check_context(prepared, params)  # before waiting, not after
        except BaseException as exc:
            self.queue.cancel_reservation(left=getattr(exc, "code", None) in _GONE)
            raise
        await self._unless_gone(
            self.queue.acquire(), request, on_late_result=lambda _: self.queue.give_back()
        )

        def finished(stream: ChatStream) -> None:
            self.active.discard(stream)
            self.queue.release(stream)

        try:
            # The slot is freed by the generation thread itself when it ends, however
            # the client behaves (reads everything, disconnects, never starts reading).
            stream = engine.start(prepared, params, on_finish=finished)
        except BaseException:
            self.queue.release()
            raise
        self.active.add(stream)
        self.metrics.started(stream, arrived)
        if self.stopping.is_set():
            stream.cancel()
        return stream

    async def _unless_gone(
        self, work: Awaitable[Any], request: Request, on_late_result: Callable[[Any], None] | None = None
    ) -> Any:
        """Await ``work`` unless the client disconnects or the server begins to shut down first."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_disconnected(request))
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, gone, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            stop.cancel()
        if not task.done():
            task.cancel()
            try:
                result = await task
            except (asyncio.CancelledError, Exception):
                pass
            else:  # it finished while being cancelled: undo what it took
                if on_late_result is not None:
                    on_late_result(result)
            if stop.done() and not stop.cancelled():
                raise self._shutting_down()
            raise RequestError("client disconnected", code="client_disconnected")
        return task.result()

    async def finish(self, stream: ChatStream, request: Request) -> ChatResult:
        """Collect a whole answer in one worker thread; stop generating if the client goes away.

        The answer is consumed in a single ``run_in_threadpool`` call rather than one
        call per token: a thread-pool round trip per token cost ~0.4 ms on a 2-core
        CPU, 10-14 % of a 64-token demo request (see ``make bench``).
        """
        watcher = asyncio.create_task(_cancel_on_disconnect(stream, request))
        try:
            result = await run_in_threadpool(stream.text)
            if self.stopping.is_set() and stream.stopped_early:
                raise self._shutting_down()
            if watcher.done():  # the client left: the answer is cut short and nobody will read it
                raise RequestError("client disconnected", code="client_disconnected")
            if not stream.stopped_early:  # stopped early: counted as cancelled by the queue
                self.metrics.finished(stream)
            return result
        finally:
            watcher.cancel()
            stream.cancel()

    async def sse(self, stream: ChatStream, model: str, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events in the OpenAI chunk format, sent as tokens arrive."""
        chunk_id, created = completion_id(), int(time.time())

        def event(delta: DeltaMessage, finish=None, usage: Usage | None = None, empty=False) -> str:
            choices = [] if empty else [ChunkChoice(delta=delta, finish_reason=finish)]
            chunk = ChatCompletionChunk(
                id=chunk_id, created=created, model=model, choices=choices, usage=usage
            )
            data = chunk.model_dump(exclude=None if include_usage else {"usage"})
            for choice in data["choices"]:  # like OpenAI: a delta carries only what it has
                choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        def error(status: int, message: str, param=None, code=None) -> str:
            return f"data: {json.dumps(error_body(status, message, param, code))}\n\n"

        # With tools, <tool_call> blocks become tool_calls deltas (helpers.tools.ToolCallStream).
        tool_request = stream.params.tools
        calls = (
            ToolCallStream(tool_request.forces_calls)
            if tool_request is not None and tool_request.choice != "none"
            else None
        )

        def deltas(events) -> Iterator[str]:
            for kind, value in events:
                if kind == "content":
                    yield event(DeltaMessage(content=value))
                else:
                    for delta in value.deltas(len(calls.calls) - 1):
                        yield event(DeltaMessage(tool_calls=[delta]))

        def answer(piece: str) -> Iterator[str]:
            if calls is None:
                yield event(DeltaMessage(content=piece))
            else:
                yield from deltas(calls.feed(piece))

        # Thinking models: reasoning deltas first, then the answer (helpers.reasoning).
        prepared = stream.prepared
        thoughts = ReasoningStream(REASONING if prepared.reasoning else CONTENT) if prepared.parsed else None

        def split(events) -> Iterator[str]:
            for kind, text in events:
                if kind == REASONING:
                    yield event(DeltaMessage(reasoning_content=text, reasoning=text))
                else:
                    yield from answer(text)

        try:
            yield event(DeltaMessage(role="assistant", content=""))
            try:
                async for piece in _pieces(stream):
                    for chunk in split(thoughts.feed(piece)) if thoughts else answer(piece):
                        yield chunk
                if thoughts is not None:
                    for chunk in split(thoughts.finish()):
                        yield chunk
                if calls is not None:
                    for chunk in deltas(calls.finish()):
                        yield chunk
            except RequestError as exc:
                yield error(exc.status_code, exc.message, exc.param, exc.code)
            except Exception:
                logger.exception("generation failed mid-stream")
                yield error(500, "internal error during generation")
            else:
                if self.stopping.is_set() and stream.stopped_early:
                    shutdown = self._shutting_down()
                    yield error(shutdown.status_code, shutdown.message, None, shutdown.code)
                else:
                    result = stream.result
                    if not stream.stopped_early:  # counted before the client can see the end
                        self.metrics.finished(stream)
                    yield event(DeltaMessage(), finish=result.finish_reason)
                    if include_usage:
                        yield event(DeltaMessage(), usage=Usage(**result.usage.as_dict()), empty=True)
            yield "data: [DONE]\n\n"
        finally:
            stream.cancel()  # the client left early: stop generating at the next token


_GONE = ("client_disconnected", "shutting_down")  # codes of a request that ended before it was answered


async def _disconnected(request: Request) -> None:
    """Return when the client has gone (the ASGI ``http.disconnect`` message)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _cancel_on_disconnect(stream: ChatStream, request: Request) -> None:
    """Wait for the ASGI ``http.disconnect`` message, then stop the generation."""
    await _disconnected(request)
    stream.cancel()


async def _pieces(stream: ChatStream) -> AsyncIterator[str]:
    """The stream's pieces, read by one thread and handed to the event loop through a queue.

    One ``call_soon_threadsafe`` per piece instead of one thread-pool round trip.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str | None, BaseException | None]] = asyncio.Queue()

    def hand_over(item: tuple[str | None, BaseException | None]) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone: the server is shutting down
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def pump() -> None:
        try:
            for piece in stream:
                hand_over((piece, None))
            hand_over((None, None))
        except BaseException as exc:  # re-raised on the event loop
            hand_over((None, exc))

    threading.Thread(target=pump, name="qwen3vl-sse", daemon=True).start()
    while True:
        piece, error = await queue.get()
        if error is not None:
            raise error
        if piece is None:
            return
        yield piece


def _install_error_handlers(app: FastAPI) -> None:
    def reply(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
        return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        if exc.status_code == 429:
            headers = {"Retry-After": str(app.state.queue.retry_after())}
        return reply(exc.status_code, exc.message, exc.param, exc.code, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        cause = first.get("ctx", {}).get("error")
        if isinstance(cause, RequestError):  # raised by a validator of helpers.protocol
            return reply(cause.status_code, cause.message, cause.param, cause.code)
        location = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(location) or None
        if first.get("type") == "json_invalid":
            return reply(400, "the request body is not valid JSON", None, "invalid_json")
        message = f"{param + ': ' if param else ''}{first.get('msg', 'invalid request')}"
        return reply(400, message, param, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "request_too_large" if exc.status_code == 413 else None
        return reply(exc.status_code, str(exc.detail), None, code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        return reply(500, "internal server error; see the server log", None, "internal_error")


# ------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helpers.server", description=__doc__.splitlines()[0])
    Settings.add_arguments(parser)
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_args(args)
        if not settings.is_demo:
            settings.resolve_model_path()  # fail now, with the download instructions, not in the background
        check_gpu_before_loading(settings)
    except (ConfigError, ModelNotFoundError, NotEnoughGPUMemory) as exc:
        parser.exit(2, f"error: {exc}\n")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        logger.warning(
            "listening on %s without --api-key: anyone who can reach it can use the GPU", settings.host
        )
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=args.log_level, timeout_graceful_shutdown=5
    )
    # Ctrl-C: uvicorn re-raises SIGINT after the app has ended its streams; exit without a traceback.
    with contextlib.suppress(KeyboardInterrupt):
        GracefulServer(config, on_exit=app.state.service.begin_shutdown).run()


def check_gpu_before_loading(settings: Settings, probe=None) -> None:
    """On a GPU (or the simulated card), refuse to start when the model cannot fit in the free memory."""
    from helpers.costs import simulated_probe
    from helpers.engine import choose_device

    device = choose_device(settings.device)
    if device.startswith("cuda") or (settings.device != "cpu" and simulated_probe() is not None):
        status = check_gpu_memory(settings, probe)
        logger.info("GPU memory: %s", status.describe())


class GracefulServer(uvicorn.Server):
    """uvicorn's server, telling the app first when SIGTERM / SIGINT arrive.

    uvicorn alone would wait for open responses and then cancel them (a plain-text
    500 and a CancelledError traceback); the app instead ends streams with an
    OpenAI error chunk and answers waiting requests with a JSON 503 at once.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


if __name__ == "__main__":
    main()
