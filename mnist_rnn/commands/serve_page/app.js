// The page of `mnist-rnn serve`: draw (or drop) a digit, send it to POST /predict, show the answer.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const PAD_COLOUR = "#111827";
const INK = "#ffffff";
const STROKE = 0.075 * pad.width; // MNIST's strokes are about an eighth of the digit's height

const $ = (id) => document.getElementById(id);
let view = null;          // the model's per-step view, from GET /model
let pictureShown = false; // the pad shows an uploaded picture: the next stroke starts afresh
let drawing = null;       // the pointer drawing the current stroke
let inked = false;        // anything drawn since the last Clear
let requestNumber = 0;    // answers to older requests are dropped

function clearPad() {
  ctx.fillStyle = PAD_COLOUR;
  ctx.fillRect(0, 0, pad.width, pad.height);
  pictureShown = false;
  inked = false;
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}

function dot([x, y]) {
  ctx.beginPath();
  ctx.arc(x, y, STROKE / 2, 0, 2 * Math.PI);
  ctx.fill();
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 && event.pointerType === "mouse") return;
  if (pictureShown) clearPad();
  pad.setPointerCapture(event.pointerId);
  drawing = { id: event.pointerId, last: padPoint(event) };
  ctx.fillStyle = INK;
  dot(drawing.last);
  inked = true;
  event.preventDefault();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing || event.pointerId !== drawing.id) return;
  const points = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  ctx.strokeStyle = INK;
  ctx.lineWidth = STROKE;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(...drawing.last);
  for (const point of points.length ? points : [event]) {
    drawing.last = padPoint(point);
    ctx.lineTo(...drawing.last);
  }
  ctx.stroke();
});

function endStroke(event) {
  if (!drawing || event.pointerId !== drawing.id) return;
  drawing = null;
  pad.toBlob((blob) => predict(blob, "drawing.png"), "image/png");
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("clear").addEventListener("click", () => {
  clearPad();
  requestNumber += 1;
  showWaiting("waiting for a digit");
  $("hint").textContent = "Draw one digit with mouse, pen or finger, or drop an image file here.";
});

// Files: chosen, or dropped anywhere on the drawing card.
function upload(file) {
  if (!file) return;
  const url = URL.createObjectURL(file);
  const picture = new Image();
  picture.onload = () => {
    clearPad();
    const scale = Math.min(pad.width / picture.width, pad.height / picture.height);
    const w = picture.width * scale, h = picture.height * scale;
    ctx.drawImage(picture, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    pictureShown = true;
    URL.revokeObjectURL(url);
  };
  picture.onerror = () => URL.revokeObjectURL(url); // the server says what is wrong with it
  picture.src = url;
  $("hint").textContent = `${file.name}: what the model read is on the right. Draw to start over.`;
  const form = new FormData();
  form.append("file", file, file.name);
  predict(form, file.name);
}
$("choose").addEventListener("click", () => $("file").click());
$("file").addEventListener("change", (event) => { upload(event.target.files[0]); event.target.value = ""; });
const zone = $("drop-zone");
zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
zone.addEventListener("drop", (event) => {
  event.preventDefault();
  zone.classList.remove("dragging");
  upload(event.dataTransfer.files[0]);
});

async function predict(body, name) {
  const mine = ++requestNumber;
  setStatus("reading…");
  let reply;
  try {
    const response = await fetch("/predict", { method: "POST", body, headers: body instanceof Blob ? { "Content-Type": "image/png" } : {} });
    reply = await response.json();
    if (!response.ok) throw new Error(reply.detail || `the server answered ${response.status}`);
  } catch (error) {
    if (mine === requestNumber) {
      showWaiting("no answer");
      setStatus(`${name}: ${error.message}`, true);
    }
    return;
  }
  if (mine !== requestNumber) return; // a newer stroke is on its way
  show(reply);
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// The answer

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

function buildBars() {
  const bars = $("bars");
  for (let d = 0; d < 10; d++) {
    const item = document.createElement("li");
    item.className = "bar";
    item.dataset.digit = d;
    item.innerHTML = `<span>${d}</span><span class="track"><span class="fill"></span></span><span class="pct">–</span>`;
    bars.appendChild(item);
  }
}

function buildStrip() {
  const head = $("strip-head");
  head.innerHTML = "<span></span>" + [...Array(10).keys()].map((d) => `<span data-digit="${d}">${d}</span>`).join("");
  const strip = $("strip");
  strip.innerHTML = "";
  view.steps.forEach((step, row) => {
    const label = document.createElement("span");
    label.className = "row-label";
    label.dataset.row = row;
    // Every 7th row labelled: 28 labels would crowd the strip.
    const narrow = window.matchMedia("(max-width: 620px)").matches;
    const name = view.unit === "row" ? (narrow ? `${row + 1}` : `row ${row + 1}`) : `${step}`;
    label.textContent = (row + 1) % 7 === 0 || row === 0 ? name : "";
    strip.appendChild(label);
    for (let d = 0; d < 10; d++) {
      const cell = document.createElement("span");
      cell.className = "cell";
      cell.dataset.row = row;
      cell.dataset.digit = d;
      strip.appendChild(cell);
    }
  });
}

function drawSeen(image28) {
  const seen = $("seen").getContext("2d");
  const pixels = seen.createImageData(28, 28);
  image28.forEach((row, y) => row.forEach((v, x) => {
    const i = 4 * (28 * y + x);
    pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = v;
    pixels.data[i + 3] = 255;
  }));
  seen.putImageData(pixels, 0, 0);
}

function showWaiting(text) {
  $("prediction").textContent = "?";
  $("confidence").textContent = text;
  setStatus("");
  document.querySelectorAll(".bar").forEach((bar) => {
    bar.classList.remove("top");
    bar.querySelector(".fill").style.width = "0";
    bar.querySelector(".pct").textContent = "–";
    delete bar.dataset.probability;
  });
  document.querySelectorAll(".strip .cell").forEach((cell) => {
    cell.style.removeProperty("--p");
    cell.classList.remove("first-led");
    delete cell.dataset.probability;
  });
  document.querySelectorAll(".row-label").forEach((label) => label.classList.remove("first-led"));
  $("seen-mark").classList.remove("on");
  document.querySelectorAll(".strip-head span").forEach((span) => span.classList.remove("final"));
  $("lead").textContent = "";
  drawSeen(Array.from({ length: 28 }, () => Array(28).fill(0)));
}

function show(reply) {
  drawSeen(reply.image28);
  if (reply.nothing_drawn) {
    showWaiting("nothing drawn");
    drawSeen(reply.image28);
    setStatus(reply.message);
    return;
  }
  setStatus("");
  $("prediction").textContent = reply.prediction;
  $("confidence").innerHTML = `<strong>${percent(reply.confidence)}</strong> sure`;
  document.querySelectorAll(".bar").forEach((bar) => {
    const p = reply.probabilities[Number(bar.dataset.digit)];
    bar.dataset.probability = p;
    bar.classList.toggle("top", Number(bar.dataset.digit) === reply.prediction);
    bar.querySelector(".fill").style.width = `${(100 * p).toFixed(2)}%`;
    bar.querySelector(".pct").textContent = percent(p);
  });
  showSteps(reply);
}

function showSteps(reply) {
  const lead = $("lead");
  if (!reply.per_step || reply.per_step.length === 0) {
    lead.textContent = "";
    return;
  }
  const info = reply.per_step_view;
  const first = info.first_led === null ? -1 : info.steps.indexOf(info.first_led);
  document.querySelectorAll(".strip-head span[data-digit]").forEach((span) =>
    span.classList.toggle("final", Number(span.dataset.digit) === reply.prediction));
  document.querySelectorAll(".row-label").forEach((label) =>
    label.classList.toggle("first-led", Number(label.dataset.row) === first));
  document.querySelectorAll(".strip .cell").forEach((cell) => {
    const row = Number(cell.dataset.row), d = Number(cell.dataset.digit);
    const p = reply.per_step[row][d];
    cell.dataset.probability = p;
    cell.style.setProperty("--p", Math.min(1, p * 1.1).toFixed(3));
    cell.classList.toggle("first-led", row === first && d === reply.prediction);
    cell.title = `${info.unit === "row" ? `after row ${row + 1}` : `after ${info.steps[row]} pixels`}: ${d} at ${percent(p)}`;
  });
  const mark = $("seen-mark");
  mark.classList.toggle("on", first >= 0 && info.unit === "row");
  mark.style.setProperty("--row", first + 1);
  const where = (step) => (info.unit === "row" ? `row ${info.steps.indexOf(step) + 1}` : `pixel ${step}`);
  if (info.first_led === null) {
    lead.textContent = `Until the very end another digit led; ${reply.prediction} only won at the last step.`;
  } else if (info.first_led === info.held_from) {
    lead.innerHTML = `<span class="mark">${reply.prediction}</span> took the lead at <span class="mark">${where(info.first_led)}</span> and kept it.`;
  } else {
    lead.innerHTML = `<span class="mark">${reply.prediction}</span> first led at <span class="mark">${where(info.first_led)}</span>; it held the lead from ${where(info.held_from)} to the end.`;
  }
}

// The model

function describeModel(info) {
  const s = info.settings;
  const cell = (s.cell || "lstm").toUpperCase();
  const parts = [
    `${s.bidirectional ? "bidirectional " : ""}${cell}`,
    `${s.hidden_size ?? 128} units`,
    `${s.num_layers ?? 1} layer${(s.num_layers ?? 1) > 1 ? "s" : ""}`,
    { rows: "reads rows", pixels: "reads pixels", permuted: "reads permuted pixels" }[s.sequence || "rows"],
  ];
  const t = info.training;
  if (t.epoch !== null && t.epoch !== undefined) parts.push(`epoch ${t.epoch + 1}`);
  if (t.best) parts.push(`best ${t.best.monitor} ${(100 * t.best.score).toFixed(2)}%`);
  return parts.join(" · ");
}

async function start() {
  clearPad();
  buildBars();
  try {
    const info = await (await fetch("/model")).json();
    view = info.per_step_view;
    $("model-line").textContent = describeModel(info);
    $("model-line").title = info.checkpoint;
  } catch (error) {
    $("model-line").textContent = "the server does not answer";
    return;
  }
  $("step-note").textContent = view.note;
  if (view.steps.length) {
    buildStrip();
    if (view.unit !== "row") {
      $("reading-title").textContent = "Step by step";
      document.querySelector("#strip-wrap figcaption").textContent = "its answer every 28 pixels read";
    }
  } else {
    $("reading-title").textContent = "What it reads";
    $("strip-wrap").classList.add("hidden");
  }
  showWaiting("waiting for a digit");
}

start();
