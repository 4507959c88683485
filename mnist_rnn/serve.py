"""`mnist-rnn serve`: draw a digit in the browser and watch the model read it row by row.

A FastAPI app served by uvicorn on 127.0.0.1 unless told otherwise. It loads the checkpoint
once and answers:

- `GET /`: the page (mnist_rnn/serve_page/, plain HTML, CSS and JavaScript; nothing from the network);
- `POST /predict`: an image file, as multipart form data (field `file`) or as the raw request body,
  answered with the prediction, the ten probabilities, the answer after each row and the
  28x28 image the model saw;
- `GET /model`: the checkpoint's model settings and training state; `GET /health`.

Concurrency: requests are received at once in uvicorn's event loop; their decoding and inference
run in worker threads, at most one per core, taken in arrival order. Nothing is shared between
requests but the model, which only reads its weights: every request has its own tensors,
inference runs under `torch.inference_mode` (a per-thread switch), and the one forward that
writes (nn.LSTM caching its flat weights after they were loaded) has run once at load time. So
no lock is needed and answers cannot mix. Torch uses one thread per request: a single image is
bound by per-operation overhead, and concurrent requests keep the cores busy instead.
"""

from __future__ import annotations

import argparse
import errno
import signal
import socket
from pathlib import Path
from typing import Any

import anyio
import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from mnist_rnn import bundled
from mnist_rnn.errors import ConfigError, PredictInputError, ServeError
from mnist_rnn.hardware import cores
from mnist_rnn.inference import LoadedModel, answer, load_model, read_upload

PAGE_DIR = Path(__file__).parent / "serve_page"
# Room for a multipart form's boundaries and part headers around a file of the largest allowed size.
FORM_OVERHEAD = 64 * 1024
NOTHING_DRAWN = "nothing drawn: the image holds no ink; draw a digit or upload a picture of one"


def run(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must lie in 0..65535, got {args.port}")
    if not 0 < args.max_upload_mb < float("inf"):
        raise ConfigError(f"--max_upload_mb must be positive and finite, got {args.max_upload_mb}")
    loaded = load_model(bundled.resolve(args.ckpt_path))
    sock = listening_socket(args.host, args.port)
    torch.set_num_threads(1)  # per request; see the module's docstring
    app = create_app(loaded, max_upload_bytes=int(args.max_upload_mb * 1_000_000))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    print(f"mnist-rnn serve: {loaded.path} at {address(sock)}  (Ctrl-C stops)", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the handler
    # that was there before: both end here, without a traceback.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    print("mnist-rnn serve: stopped", flush=True)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


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
        if err.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is already in use; stop what listens there or pass another --port") from None
        if err.errno == errno.EACCES:
            raise ServeError(f"port {port} on {host} needs privileges; pass a --port above 1023") from None
        if err.errno == errno.EADDRNOTAVAIL:
            raise ServeError(f"--host {host} is not an address of this machine; use 127.0.0.1, or 0.0.0.0 for every interface") from None
        raise ServeError(f"cannot listen on {host}:{port} ({err.strerror or err}); pass another --host or --port") from None
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def model_info(loaded: LoadedModel) -> dict[str, Any]:
    """What GET /model says: the checkpoint, its settings, normalization, training state and step view."""
    view = loaded.view
    return {
        "checkpoint": str(loaded.path),
        "settings": loaded.settings,
        "normalization": {"mean": loaded.mean, "std": loaded.std},
        "training": loaded.training,
        "per_step_view": {"unit": view.unit, "steps": view.steps, "note": view.note},
    }


def describe(loaded: LoadedModel, digit: torch.Tensor) -> dict[str, Any]:
    """The JSON answer for one MNIST-like digit (28, 28) uint8."""
    settings = {**loaded.settings, "mean": loaded.mean, "std": loaded.std}
    view = loaded.view
    reply: dict[str, Any] = {"image28": digit.tolist(), "model": settings}
    if int(digit.max()) == 0:
        return {
            "prediction": None, "confidence": None, "probabilities": None, "per_step": None,
            "per_step_view": {
                "unit": view.unit, "steps": view.steps, "note": view.note, "first_led": None, "held_from": None,
            },
            "nothing_drawn": True, "message": NOTHING_DRAWN, **reply,
        }
    probs, per_step = answer(loaded, digit.unsqueeze(0))
    probs = probs[0]
    prediction = int(probs.argmax())
    first_led = held_from = None
    if per_step is not None:
        leading = (per_step[0].argmax(dim=1) == prediction).tolist()
        if leading[-1]:
            first_led = view.steps[leading.index(True)]
            # The last step at which another digit led, plus one: from there on the answer held.
            held_from = view.steps[len(leading) - leading[::-1].index(False)] if False in leading else view.steps[0]
    return {
        "prediction": prediction,
        "confidence": float(probs[prediction]),
        "probabilities": probs.tolist(),
        "per_step": per_step[0].tolist() if per_step is not None else [],
        "per_step_view": {
            "unit": view.unit, "steps": view.steps, "note": view.note, "first_led": first_led, "held_from": held_from,
        },
        "nothing_drawn": False,
        **reply,
    }


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
    except HTTPException as err:  # Starlette's own message, e.g. too many files
        raise HTTPException(400, f"unreadable form ({err.detail}); send the image as the form field `file`") from None
    except Exception as err:  # python-multipart's parse errors
        raise HTTPException(400, f"unreadable form ({err}); send the image as the form field `file`") from None
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
    info = model_info(loaded)
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
            reply = await anyio.to_thread.run_sync(_answer_bytes, loaded, data, limiter=workers)
        except PredictInputError as err:
            raise HTTPException(400, f"not a readable image: {err}") from None
        return JSONResponse(reply)

    return app


def _answer_bytes(loaded: LoadedModel, data: bytes) -> dict[str, Any]:
    return describe(loaded, read_upload(data))

