"""Load on `mnist-rnn serve`: throughput and latency of POST /predict at 1, 8 and 32 concurrent clients.

Each client posts the PNG the page sends for a drawn digit (a 280x280 dark pad with a white
test digit on it) and waits for the answer before posting again; the clients run together
until each level's request count or time limit is reached. Loopback only: the figures are the
server's, not a network's.

    python -m benchmarks.serve_load --ckpt_path CKPT        # starts a server on a free port, stops it after
    python -m benchmarks.serve_load --url http://127.0.0.1:8000/   # a server already running

Run it from the repository root, on an otherwise idle machine for figures worth quoting.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import ipaddress
import platform
import re
import select
import signal
import subprocess
import sys
import time
from urllib.parse import urlparse

import httpx
import numpy as np
from PIL import Image

from mnist_rnn.data.mnist_files import load_split
from mnist_rnn.run.hardware import cores, cpu_name


def page_png(index: int = 0) -> bytes:
    """What the page posts after a stroke: a 280x280 PNG, white ink on the dark pad."""
    digit = Image.fromarray(load_split("test")[0][index].numpy()).resize((200, 200), Image.Resampling.BICUBIC)
    pad = Image.new("RGB", (280, 280), (17, 24, 39))
    pad.paste(Image.merge("RGB", [digit] * 3), (40, 40), digit)
    buffer = io.BytesIO()
    pad.save(buffer, format="PNG")
    return buffer.getvalue()


def machine() -> str:
    return f"{cores()} cores, {cpu_name()}"


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"serve_load: error: {url} is not on this machine's loopback; pass http://127.0.0.1:PORT/")


async def level(url: str, body: bytes, clients: int, requests: int, max_seconds: float) -> dict:
    """`clients` clients posting together until `requests` answers or `max_seconds` have passed.

    Each client has a connection of its own, as separate browsers do. (Sharing one httpx client's
    pool among them starves some clients in the client itself: p90 went from 0.39 to 1.3 s.)
    """
    latencies: list[float] = []
    errors = 0
    issued = 0
    connected, all_connected, go = 0, asyncio.Event(), asyncio.Event()
    deadline = float("inf")

    async def one_client() -> None:
        nonlocal errors, issued, connected
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            # One request, not counted, opens the connection: the figures are for steady state.
            await client.post("predict", content=body, headers={"Content-Type": "image/png"})
            connected += 1
            if connected == clients:
                all_connected.set()
            await go.wait()
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                start = time.perf_counter()
                reply = await client.post("predict", content=body, headers={"Content-Type": "image/png"})
                if reply.status_code == 200 and reply.json()["prediction"] is not None:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

    tasks = [asyncio.create_task(one_client()) for _ in range(clients)]
    await all_connected.wait()
    begin = time.perf_counter()
    deadline = begin + max_seconds
    go.set()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - begin
    ms = np.array(latencies) * 1000
    return {
        "clients": clients, "answers": len(latencies), "errors": errors, "seconds": seconds,
        "throughput": len(latencies) / seconds,
        "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
    }


def start_server(ckpt_path: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mnist_rnn", "serve", "--ckpt_path", ckpt_path, "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    ready, _, _ = select.select([process.stdout], [], [], 180)
    line = process.stdout.readline() if ready else ""
    found = re.search(r" at (http://\S+/) ", line)
    if not found:
        process.kill()
        raise SystemExit(f"serve_load: error: the server did not start ({line.strip() or 'no output'})")
    return process, found.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running `mnist-rnn serve` on this machine, e.g. http://127.0.0.1:8000/")
    where.add_argument("--ckpt_path", help="start `mnist-rnn serve` with this checkpoint on a free port, stop it after")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrency levels (default 1 8 32)")
    parser.add_argument("--requests", type=int, default=1000, help="answers per level at most (default 1000)")
    parser.add_argument("--max_seconds", type=float, default=25.0, help="seconds per level at most (default 25)")
    args = parser.parse_args()

    process = None
    if args.ckpt_path:
        process, url = start_server(args.ckpt_path)
    else:
        url = args.url if args.url.endswith("/") else args.url + "/"
    check_loopback(url)
    try:
        info = httpx.get(url + "model", timeout=10).json()
        settings = info["settings"]
        body = page_png()
        print(f"# mnist-rnn serve load, {datetime.date.today()}, {machine()}, Python {platform.python_version()}")
        print(
            f"# model: {'bidirectional ' if settings.get('bidirectional') else ''}{settings.get('cell', 'lstm')}"
            f" {settings.get('hidden_size')} units x {settings.get('num_layers')} layers, reads {settings.get('sequence')};"
            f" request: {len(body):,}-byte PNG from the page"
        )
        print(f"{'clients':>7}  {'answers':>7}  {'errors':>6}  {'seconds':>7}  {'req/s':>7}  {'p50 ms':>7}  {'p99 ms':>7}")
        for clients in args.clients:
            r = asyncio.run(level(url, body, clients, args.requests, args.max_seconds))
            print(
                f"{r['clients']:>7}  {r['answers']:>7}  {r['errors']:>6}  {r['seconds']:>7.1f}  {r['throughput']:>7.1f}"
                f"  {r['p50']:>7.1f}  {r['p99']:>7.1f}",
                flush=True,
            )
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
