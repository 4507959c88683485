"""`mnist-rnn serve`: draw a digit in the browser and watch the model read it row by row (docs/serve.md).

The checkpoint is loaded once. Concurrency: uvicorn's event loop receives the requests; decoding and
inference run in worker threads, at most one per core, in arrival order. No lock is needed and answers
cannot mix: each request has its own tensors, `torch.inference_mode` is per thread, and the one forward
that writes (nn.LSTM caching its flat weights) ran at load time. Torch uses one thread per request: a
single image is bound by per-operation overhead, and concurrent requests keep the cores busy instead.
"""

from __future__ import annotations

import errno
import signal
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import anyio
import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from mnist_rnn.commands import bundled
from mnist_rnn.commands.inference import LoadedModel, answer
from mnist_rnn.data.images import read_digit
from mnist_rnn.errors import PredictInputError, ServeError
from mnist_rnn.run.hardware import cores

PAGE_DIR = Path(__file__).parent / "serve_page"
# Room for a multipart form's boundaries and part headers around a file of the largest allowed size.
FORM_OVERHEAD = 64 * 1024
NOTHING_DRAWN = "nothing drawn: the image holds no ink; draw a digit or upload a picture of one"


def run(ckpt_path: Optional[str], host: str, port: int, max_upload_mb: float) -> None:
    """`mnist-rnn serve`, its options checked by their types (own_commands.serve)."""
    loaded = bundled.command_model(ckpt_path)
    sock = listening_socket(host, port)
    torch.set_num_threads(1)  # per request; see the module's docstring
    app = create_app(loaded, max_upload_bytes=int(max_upload_mb * 1_000_000))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    print(f"mnist-rnn serve: {loaded.path} at {address(sock)}  (Ctrl-C stops)", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the handler
    # that was there before: both end here (as KeyboardInterrupt), without a traceback.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    print("mnist-rnn serve: stopped", flush=True)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a ServeError that says why it cannot be (before uvicorn starts)."""
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ServeError(f"--host {host} is not a known address ({err.strerror}); use 127.0.0.1, or 0.0.0.0 for every interface") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does; a listener still blocks the port
        sock.bind(where)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        reason = {
            errno.EADDRINUSE: f"port {port} on {host} is already in use; stop what listens there or pass another --port",
            errno.EACCES: f"port {port} on {host} needs privileges; pass a --port above 1023",
            errno.EADDRNOTAVAIL: f"--host {host} is not an address of this machine; use 127.0.0.1, or 0.0.0.0 for every interface",
        }.get(err.errno, f"cannot listen on {host}:{port} ({err.strerror or err}); pass another --host or --port")
        raise ServeError(reason) from None
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def describe(loaded: LoadedModel, digit: torch.Tensor) -> dict[str, Any]:
    """The JSON answer for one MNIST-like digit (28, 28) uint8."""
    reply: dict[str, Any] = {"prediction": None, "confidence": None, "probabilities": None, "per_step": None}
    first_led = held_from = None
    blank = int(digit.max()) == 0
    if not blank:
        probs, per_step = answer(loaded, digit.unsqueeze(0))
        probs = probs[0]
        prediction = int(probs.argmax())
        reply.update(prediction=prediction, confidence=float(probs[prediction]), probabilities=probs.tolist(), per_step=[])
        if per_step is not None:
            reply["per_step"] = per_step[0].tolist()
            leading = (per_step[0].argmax(dim=1) == prediction).tolist()
            steps = loaded.view.steps
            if leading[-1]:
                first_led = steps[leading.index(True)]
                # The last step at which another digit led, plus one: from there on the answer held.
                held_from = steps[len(leading) - leading[::-1].index(False)] if False in leading else steps[0]
    reply["per_step_view"] = {**asdict(loaded.view), "first_led": first_led, "held_from": held_from}
    reply["nothing_drawn"] = blank
    if blank:
        reply["message"] = NOTHING_DRAWN
    return {**reply, "image28": digit.tolist(), "model": {**loaded.settings, "mean": loaded.mean, "std": loaded.std}}


def too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"upload larger than {limit / 1e6:g} MB; send a smaller image (--max_upload_mb)")


async def read_body(request: Request, limit: int, allowance: int = 0) -> bytes:
    """The request's body, or 413 as soon as it is known to be longer than limit + allowance."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + allowance:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit + allowance:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def upload_of(request: Request, limit: int) -> bytes:
    """The image's bytes: the one file of a multipart form, or the whole body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return await read_body(request, limit)
    body = await read_body(request, limit, allowance=FORM_OVERHEAD)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16, max_part_size=limit + 1)
    except Exception as err:  # python-multipart's parse errors, or Starlette's HTTPException (its reason in .detail)
        raise HTTPException(400, f"unreadable form ({getattr(err, 'detail', err)}); send the image as the form field `file`") from None
    files = [value for value in form.values() if isinstance(value, UploadFile)]
    if not files:
        raise HTTPException(400, "the form holds no file; send the image as the form field `file`")
    data = await files[0].read()
    if len(data) > limit:
        raise too_large(limit)
    return data


def create_app(loaded: LoadedModel, max_upload_bytes: int = 10_000_000) -> FastAPI:
    app = FastAPI(title="mnist-rnn", description="Draw a digit; see how the recurrent model reads it.", docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")
    info = {  # what GET /model says
        "checkpoint": str(loaded.path),
        "settings": loaded.settings,
        "normalization": {"mean": loaded.mean, "std": loaded.std},
        "training": loaded.training,
        "per_step_view": asdict(loaded.view),
    }
    # Decoding and inference run in at most one thread per core, the requests waiting their turn in
    # arrival order: more threads than cores only fight over the cores and the GIL.
    workers = anyio.CapacityLimiter(cores())

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model")
    def model() -> dict[str, Any]:
        return info

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        data = await upload_of(request, max_upload_bytes)
        if not data:
            raise HTTPException(400, "empty upload; send an image file as the body or as the form field `file`")
        try:
            reply = await anyio.to_thread.run_sync(lambda: describe(loaded, read_digit(data)), limiter=workers)
        except PredictInputError as err:
            raise HTTPException(400, f"not a readable image: {err}") from None
        return JSONResponse(reply)

    return app


