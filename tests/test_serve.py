"""`mnist-rnn serve`: the page in a real browser (Debian's chromium, driven by Playwright), the JSON API, start and stop."""

from __future__ import annotations

import csv
import io
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import sync_playwright

from mnist_rnn.commands.inference import answer, load_model
from mnist_rnn.commands.serve import create_app
from mnist_rnn.data.images import read_digit
from mnist_rnn.data.mnist_files import load_split
from mnist_rnn.model.classifier import LSTMClassifier
from tests.conftest import cli_error, run_main, subprocess_env
from tests.test_inference import write_checkpoint

# Playwright cannot download its browsers here: it drives the system's chromium, headless and offline.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
UPLOAD_LIMIT_MB = 1  # the test server's --max_upload_mb: small, so that the 413 checks send little
STARTUP_SECONDS = 120  # importing torch, Lightning and FastAPI on a busy 2-core machine


def start_server(*args: str, cwd: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`mnist-rnn serve --port 0 ARGS` on a free port of 127.0.0.1; returns the process and the address it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mnist_rnn", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or subprocess_env(), cwd=cwd,
    )
    ready, _, _ = select.select([process.stdout], [], [], STARTUP_SECONDS)
    line = process.stdout.readline() if ready else ""
    found = re.search(r" at (http://127\.0\.0\.1:\d+/)  \(Ctrl-C stops\)$", line.strip())
    if not found:
        process.kill()
        raise AssertionError(f"the server did not start: {line!r} {process.stderr.read()}")
    return process, found.group(1)


def stop(process: subprocess.Popen) -> tuple[int, str, str]:
    """Ctrl-C, as from a terminal; returns (exit status, rest of stdout, stderr)."""
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def server(trained_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    process, url = start_server("--ckpt_path", str(trained_ckpt), "--max_upload_mb", str(UPLOAD_LIMIT_MB), cwd=folder)
    yield url
    stop(process)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def test_digits():
    images, labels = load_split("test")
    return images[:40], labels[:40]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def as_paper(digit: torch.Tensor, side: int = 112) -> Image.Image:
    """A test digit as a user's picture: dark ink on white paper, enlarged."""
    return Image.fromarray(255 - digit.numpy()).resize((side, side), Image.Resampling.BICUBIC)


def draw_seven(page) -> None:
    """One mouse stroke on the pad: across the top, then down to the lower left."""
    box = page.locator("#pad").bounding_box()
    x, y, side = box["x"], box["y"], box["width"]
    page.mouse.move(x + 0.3 * side, y + 0.25 * side)
    page.mouse.down()
    page.mouse.move(x + 0.7 * side, y + 0.25 * side, steps=12)
    page.mouse.move(x + 0.45 * side, y + 0.8 * side, steps=12)
    page.mouse.up()


def shown_probabilities(page) -> list[float]:
    return [float(p) for p in page.locator("#bars .bar").evaluate_all("bars => bars.map(b => b.dataset.probability)")]


def shown_strip(page) -> list[list[float]]:
    cells = page.locator("#strip .cell").evaluate_all(
        "cells => cells.map(c => [Number(c.dataset.row), Number(c.dataset.digit), Number(c.dataset.probability)])"
    )
    strip = [[float("nan")] * 10 for _ in range(28)]
    for row, digit, p in cells:
        strip[row][digit] = p
    assert len(cells) == 280
    return strip


def test_drawing_and_uploading_in_the_browser(server, browser, trained_ckpt, test_digits, tmp_path):
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(server)
    page.wait_for_selector("#strip .cell")
    assert "LSTM · 64 units · 1 layer · reads rows · epoch 1" in page.locator("#model-line").text_content()
    assert page.locator("#prediction").text_content() == "?"

    draw_seven(page)
    page.wait_for_function("document.querySelector('#prediction').textContent !== '?'")
    # The stroke is a clear 7: this checkpoint gives it 99.5%, and every other digit below 1%.
    assert page.locator("#prediction").text_content() == "7"
    probabilities = shown_probabilities(page)
    assert len(probabilities) == 10
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)  # float32 softmax: sums to 1 within 1e-6
    strip = shown_strip(page)
    for row in strip:
        assert sum(row) == pytest.approx(1.0, abs=1e-5)
    assert max(range(10), key=strip[-1].__getitem__) == 7  # after the last row: the final answer
    assert re.fullmatch(r"7 (took the lead|first led) at row \d+.*", page.locator("#lead").text_content())
    page.wait_for_timeout(300)  # the bars grow in 0.25 s
    page.screenshot(path=tmp_path / "drawn.png", full_page=True)

    # A test digit saved as PNG, chosen as a file: the page shows what `mnist-rnn predict` says of that file.
    # serve computes in float32; predict would pick bf16-mixed on a CPU with native bf16 (batch size 128 in
    # the config), which moves probabilities in the 4th decimal, so it is asked for float32 here.
    digit_file = tmp_path / "test_digit_0.png"
    as_paper(test_digits[0][0]).save(digit_file)
    page.click("#clear")
    assert page.locator("#prediction").text_content() == "?"
    with page.expect_file_chooser() as chooser:
        page.click("#choose")
    chooser.value.set_files(str(digit_file))
    page.wait_for_function("document.querySelector('#prediction').textContent !== '?'")
    status, _, _ = run_main(
        "predict", "--ckpt_path", str(trained_ckpt), "--data.predict_path", str(digit_file),
        "--predictions.output", str(tmp_path / "predict.csv"), "--trainer.precision", "32-true", cwd=tmp_path,
    )
    assert status == 0
    with open(tmp_path / "predict.csv", newline="") as file:
        (row,) = list(csv.DictReader(file))
    assert page.locator("#prediction").text_content() == row["prediction"]
    top = max(shown_probabilities(page))
    assert f"{top:.4f}" == row["confidence"]
    assert page.locator("#confidence").text_content() == f"{100 * top:.1f}% sure"
    assert len(shown_strip(page)) == 28
    assert "test_digit_0.png" in page.locator("#hint").text_content()
    page.wait_for_timeout(300)  # the bars grow in 0.25 s
    page.screenshot(path=tmp_path / "uploaded.png", full_page=True)
    assert (tmp_path / "uploaded.png").stat().st_size > 10_000  # a rendered page, not an empty image

    # On a phone's width the page needs no sideways scrolling.
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.wait_for_selector("#strip .cell")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=tmp_path / "phone.png", full_page=True)
    page.close()


def test_an_empty_drawing_is_answered_as_such_in_the_page(server, browser):
    page = browser.new_page()
    page.goto(server)
    page.wait_for_selector("#strip .cell")
    blank = Image.new("L", (280, 280), 0)
    page.set_input_files("#file", files=[{"name": "blank.png", "mimeType": "image/png", "buffer": png_bytes(blank)}])
    page.wait_for_function("document.querySelector('#confidence').textContent === 'nothing drawn'")
    assert page.locator("#prediction").text_content() == "?"
    assert "nothing drawn" in page.locator("#status").text_content()
    page.close()


def test_health_and_model(server, trained_ckpt):
    assert httpx.get(server + "health").json() == {"status": "ok"}
    info = httpx.get(server + "model").json()
    assert info["settings"]["hidden_size"] == 64 and info["settings"]["sequence"] == "rows"
    assert info["normalization"] == {"mean": 0.1307, "std": 0.3081}
    assert info["training"]["epoch"] == 0 and info["training"]["global_step"] == 400
    best = info["training"]["best"]
    # The checkpoint's file name carries the score its ModelCheckpoint saved it for.
    assert best["monitor"] == "val/acc" and f"val_acc{best['score']:.4f}" in trained_ckpt.name
    assert info["per_step_view"]["steps"] == list(range(1, 29))


def test_predict_takes_a_form_or_the_raw_body_and_answers_as_predict_does(server, trained_ckpt, test_digits):
    data = png_bytes(as_paper(test_digits[0][5]))
    by_form = httpx.post(server + "predict", files={"file": ("five.png", data, "image/png")}).json()
    by_body = httpx.post(server + "predict", content=data, headers={"Content-Type": "image/png"}).json()
    assert by_form == by_body
    loaded = load_model(trained_ckpt)
    digit = read_digit(data)
    probs, per_step = answer(loaded, digit.unsqueeze(0))
    assert by_body["image28"] == digit.tolist()
    assert by_body["prediction"] == int(probs.argmax())
    assert by_body["probabilities"] == pytest.approx(probs[0].tolist(), abs=1e-6)  # same code, same float32 result
    torch.testing.assert_close(torch.tensor(by_body["per_step"]), per_step[0], atol=1e-6, rtol=0)
    assert by_body["confidence"] == max(by_body["probabilities"])
    assert by_body["model"]["hidden_size"] == 64 and by_body["model"]["mean"] == 0.1307
    view = by_body["per_step_view"]
    led = view["first_led"]
    assert max(range(10), key=by_body["per_step"][led - 1].__getitem__) == by_body["prediction"]
    assert all(max(range(10), key=row.__getitem__) != by_body["prediction"] for row in by_body["per_step"][: led - 1])


def test_bad_uploads_get_a_one_line_reason_and_the_server_goes_on(server, test_digits, tmp_path):
    limit = UPLOAD_LIMIT_MB * 1_000_000
    good = png_bytes(as_paper(test_digits[0][1]))
    bad = {
        "raw, too large": dict(content=b"\0" * (limit + 1)),
        "form, too large": dict(files={"file": ("big.png", b"\0" * (limit + 1), "image/png")}),
        "not an image": dict(files={"file": ("notes.txt", b"just some text", "text/plain")}),
        "truncated": dict(content=good[: len(good) // 2], headers={"Content-Type": "image/png"}),
        "empty": dict(content=b""),
        "form without a file": dict(files={"comment": (None, "no file here")}),  # a plain field
        "form with two files": dict(files=[("file", ("a.png", good, "image/png")), ("file", ("b.png", good, "image/png"))]),
    }
    expected = {
        "raw, too large": (413, "upload larger than 1 MB"),
        "form, too large": (413, "upload larger than 1 MB"),
        "not an image": (400, "not a readable image: not an image Pillow can read"),
        "truncated": (400, "not a readable image: truncated or corrupt image data"),
        "empty": (400, "empty upload"),
        "form without a file": (400, "the form holds no file"),
        # Starlette's own reason, without its "400: " prefix (its HTTPException, not FastAPI's subclass)
        "form with two files": (400, "unreadable form (Too many files. Maximum number of files is 1.); send the image"),
    }
    for name, request in bad.items():
        reply = httpx.post(server + "predict", **request)
        status, start = expected[name]
        assert reply.status_code == status, (name, reply.text)
        detail = reply.json()["detail"]
        assert detail.startswith(start) and "\n" not in detail, (name, detail)
        assert httpx.get(server + "health").json() == {"status": "ok"}
    # Just under the limit is fine: a 900x900 picture of noise stored as a PNG of about 0.8 MB.
    noise = png_bytes(Image.fromarray(torch.randint(0, 256, (900, 900), dtype=torch.uint8).numpy()))
    assert 0.75 * limit < len(noise) < limit
    assert httpx.post(server + "predict", files={"file": ("noise.png", noise, "image/png")}).status_code == 200
    assert httpx.post(server + "predict", content=good).json()["prediction"] is not None


def test_a_blank_picture_is_nothing_drawn_not_a_guess(server):
    for colour in (0, 255):  # the page's dark pad, or white paper
        reply = httpx.post(server + "predict", content=png_bytes(Image.new("L", (280, 280), colour)))
        assert reply.status_code == 200
        body = reply.json()
        assert body["nothing_drawn"] is True and body["message"].startswith("nothing drawn")
        assert body["prediction"] is None and body["probabilities"] is None


def test_concurrent_requests_get_their_own_answers(server, trained_ckpt, test_digits):
    uploads = [png_bytes(as_paper(digit, side=60 + i)) for i, digit in enumerate(test_digits[0][:32])]
    loaded = load_model(trained_ckpt)
    expected = [answer(loaded, read_digit(data).unsqueeze(0))[0][0].tolist() for data in uploads]

    def ask(data: bytes) -> list[float]:
        return httpx.post(server + "predict", content=data, timeout=60).json()["probabilities"]

    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(ask, uploads * 2))  # 64 requests, 32 at a time
    for i, probabilities in enumerate(replies):
        assert probabilities == pytest.approx(expected[i % 32], abs=1e-6)  # same model, same input, float32
    assert len({tuple(round(p, 4) for p in r) for r in replies}) > 16  # different digits, different answers


@pytest.mark.parametrize(
    "settings,unit,steps",
    [(dict(bidirectional=True), "none", 0), (dict(sequence="permuted"), "step", 28), (dict(sequence="pixels"), "row", 28)],
    ids=["bidirectional", "permuted", "pixels"],
)
def test_what_the_page_is_told_for_other_kinds_of_model(tmp_path, test_digits, settings, unit, steps):
    torch.manual_seed(0)
    loaded = load_model(write_checkpoint(tmp_path / "m.ckpt", LSTMClassifier(hidden_size=8, **settings)))
    client = TestClient(create_app(loaded))
    view = client.get("/model").json()["per_step_view"]
    assert view["unit"] == unit and len(view["steps"]) == steps and view["note"]
    body = client.post("/predict", content=png_bytes(as_paper(test_digits[0][0]))).json()
    assert len(body["per_step"]) == steps
    assert sum(body["probabilities"]) == pytest.approx(1.0, abs=1e-5)  # float32 softmax: sums to 1 within 1e-6
    page = client.get("/")
    assert page.status_code == 200 and "<canvas id=\"pad\"" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_bad_start_settings_are_one_line_errors(capsys, tmp_path, trained_ckpt):
    message = cli_error(capsys, "serve", "--ckpt_path", str(trained_ckpt), "--host", "192.0.2.1")  # TEST-NET-1
    assert message == "--host 192.0.2.1 is not an address of this machine; use 127.0.0.1, or 0.0.0.0 for every interface"
    assert "checkpoint nope.ckpt does not exist" in cli_error(capsys, "serve", "--ckpt_path", "nope.ckpt")
    # The options' types refuse these before anything is imported or loaded (own_commands.serve).
    assert cli_error(capsys, "serve", "--ckpt_path", "x", "--port", "70000") == (
        "--port 70000 is not valid here: it takes an integer in 0..65535 (options: mnist-rnn serve --help)"
    )
    assert "--port x is not valid here" in cli_error(capsys, "serve", "--port", "x")
    assert "--max_upload_mb 0 is not valid here: it takes a finite number above 0" in cli_error(
        capsys, "serve", "--ckpt_path", "x", "--max_upload_mb", "0"
    )
    assert "expected one argument" in cli_error(capsys, "serve", "--ckpt_path")  # (without it: the bundled model)
    assert "unrecognized arguments: --bogus" in cli_error(capsys, "serve", "--ckpt_path", "x", "--bogus")


def test_a_busy_port_is_refused_and_ctrl_c_stops_cleanly(trained_ckpt, capsys, tmp_path):
    process, url = start_server("--ckpt_path", str(trained_ckpt), cwd=tmp_path)
    port = url.rsplit(":", 1)[1].rstrip("/")
    message = cli_error(capsys, "serve", "--ckpt_path", str(trained_ckpt), "--port", port)
    assert message == f"port {port} on 127.0.0.1 is already in use; stop what listens there or pass another --port"
    assert httpx.get(url + "health").json() == {"status": "ok"}  # the first server is untouched
    status, out, err = stop(process)
    assert status == 0 and out.strip() == "mnist-rnn serve: stopped" and "Traceback" not in err
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "health")
    with socket.socket() as probe:  # and the port is free again
        probe.bind(("127.0.0.1", int(port)))
