"""The FastAPI server: OpenAI-compatible chat completions for text, images and videos.

    python -m helpers.server --model demo                 # no GPU needed
    python -m helpers.server --host 0.0.0.0 --api-key KEY # exposed: always set a key

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``
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
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from helpers.config import ConfigError, ModelNotFoundError, Settings
from helpers.costs import format_bytes
from helpers.engine import ChatResult, ChatStream, Engine, SamplingParams
from helpers.errors import RequestError
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
    """One generation at a time; at most ``max_waiting`` requests queue behind it."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self.waiting = 0
        self.running = 0
        self.completed = 0
        self.cancelled = 0
        self._slot = asyncio.Semaphore(1)

    def reserve(self) -> None:
        """Take a place in the queue now, or refuse with 429."""
        if self.running + self.waiting >= 1 + self.max_waiting:
            raise ServerBusy(
                f"the server is busy ({self.running} running, {self.waiting} waiting); retry later",
                status_code=429,
                code="queue_full",
            )
        self.waiting += 1

    def cancel_reservation(self) -> None:
        self.waiting -= 1

    async def acquire(self) -> None:
        """Wait for the model (call after :meth:`reserve`)."""
        self._loop = asyncio.get_running_loop()
        try:
            await self._slot.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self, stream: ChatStream | None = None) -> None:
        """Free the model; safe to call from any thread (the generation thread calls it)."""
        with contextlib.suppress(RuntimeError):  # the event loop is gone: the server is shutting down
            self._loop.call_soon_threadsafe(self._release, stream is not None and stream.stopped_early)

    def _release(self, stopped_early: bool) -> None:
        self.running -= 1
        if stopped_early:
            self.cancelled += 1
        else:
            self.completed += 1
        self._slot.release()

    def stats(self) -> dict[str, int]:
        return {
            "running": self.running,
            "waiting": self.waiting,
            "max_waiting": self.max_waiting,
            "completed": self.completed,
            "cancelled": self.cancelled,
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
    queue = GenerationQueue(settings.max_queue)
    load = loader or (lambda s: Engine.load(s, verbose=False))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder.start_loading(load)
        yield

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
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
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
        }
        if holder.engine is None:
            body["status"] = "error" if holder.error else "loading"
            if holder.error:
                body["error"] = holder.error
            return JSONResponse(body, status_code=503)
        body.update(_engine_facts(holder.engine))
        body["status"] = "ok"
        return JSONResponse(body)

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
        stream = await _start(holder, queue, body.messages, body.generation_params())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return GenerationStreamResponse(
                stream,
                _sse(stream, settings.model, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        result = await _finish(stream, request)
        return ChatCompletionResponse(
            model=settings.model,
            choices=[
                Choice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)
            ],
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
        stream = await _start(holder, queue, body.messages, body.generation_params())
        result = await _finish(stream, request)
        return GenerateResponse(response=result.text)

    app.state.ui = False
    if settings.ui:  # Gradio is imported only here, so `--no-ui` starts as fast as before
        from helpers.webui import mount_ui

        app.state.ui = mount_ui(app, settings)
    return app


def _engine_facts(engine: Engine) -> dict[str, Any]:
    info = engine.info()
    facts = {k: info[k] for k in ("device", "dtype", "attention", "weights_gib")}
    facts["cuda_available"] = info["device"].startswith("cuda")
    facts["gpu"] = info.get("gpu")
    facts["gpu_memory"] = f"{info['gpu_memory_allocated_gib']} GiB allocated" if "gpu" in info else "N/A"
    return facts


async def _start(
    holder: ModelHolder, queue: GenerationQueue, messages: list, raw_params: dict[str, Any]
) -> ChatStream:
    """Validate, load media (in a thread), wait for the model, start generating."""
    engine = holder.ready_engine()
    params = SamplingParams.build(engine.settings, **raw_params)
    queue.reserve()
    try:
        prepared = await run_in_threadpool(engine.prepare, messages)
    except BaseException:
        queue.cancel_reservation()
        raise
    await queue.acquire()
    try:
        # The slot is freed by the generation thread itself when it ends, however
        # the client behaves (reads everything, disconnects, never starts reading).
        return engine.start(prepared, params, on_finish=queue.release)
    except BaseException:
        queue.release()
        raise


async def _finish(stream: ChatStream, request: Request) -> ChatResult:
    """Collect a whole answer in one worker thread; stop generating if the client goes away.

    The answer is consumed in a single ``run_in_threadpool`` call rather than one
    call per token: a thread-pool round trip per token cost ~0.4 ms on a 2-core
    CPU, 10-14 % of a 64-token demo request (see ``make bench``).
    """
    watcher = asyncio.create_task(_cancel_on_disconnect(stream, request))
    try:
        result = await run_in_threadpool(stream.text)
        if watcher.done():  # the client left: the answer is cut short and nobody will read it
            raise RequestError("client disconnected", code="client_disconnected")
        return result
    finally:
        watcher.cancel()
        stream.cancel()


async def _cancel_on_disconnect(stream: ChatStream, request: Request) -> None:
    """Wait for the ASGI ``http.disconnect`` message, then stop the generation."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
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


async def _sse(stream: ChatStream, model: str, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in the OpenAI chunk format, sent as tokens arrive."""
    chunk_id, created = completion_id(), int(time.time())

    def event(delta: DeltaMessage, finish: str | None = None, usage: Usage | None = None, empty=False) -> str:
        choices = [] if empty else [ChunkChoice(delta=delta, finish_reason=finish)]
        chunk = ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=choices, usage=usage)
        data = chunk.model_dump(exclude=None if include_usage else {"usage"})
        for choice in data["choices"]:  # like OpenAI: a delta carries only what it has
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        yield event(DeltaMessage(role="assistant", content=""))
        try:
            async for piece in _pieces(stream):
                yield event(DeltaMessage(content=piece))
        except RequestError as exc:
            yield f"data: {json.dumps(error_body(exc.status_code, exc.message, exc.param, exc.code))}\n\n"
        except Exception:
            logger.exception("generation failed mid-stream")
            yield f"data: {json.dumps(error_body(500, 'internal error during generation'))}\n\n"
        else:
            result = stream.result
            yield event(DeltaMessage(), finish=result.finish_reason)
            if include_usage:
                yield event(DeltaMessage(), usage=Usage(**result.usage.as_dict()), empty=True)
        yield "data: [DONE]\n\n"
    finally:
        stream.cancel()  # the client left early: stop generating at the next token


def _install_error_handlers(app: FastAPI) -> None:
    def reply(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
        return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        if exc.status_code == 429:
            headers = {"Retry-After": "1"}
        return reply(exc.status_code, exc.message, exc.param, exc.code, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
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
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m helpers.server", description=__doc__.splitlines()[0])
    Settings.add_arguments(parser)
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_args(args)
        if not settings.is_demo:
            settings.resolve_model_path()  # fail now, with the download instructions, not in the background
    except (ConfigError, ModelNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        logger.warning(
            "listening on %s without --api-key: anyone who can reach it can use the GPU", settings.host
        )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
