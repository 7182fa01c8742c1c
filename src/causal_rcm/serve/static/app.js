// causal-rcm stream page: one WebSocket, JSON control messages, binary RGB frames drawn on a canvas.
// Frame message: 16-byte little-endian header (uint32 index, uint16 width, uint16 height,
// float32 chunk compute ms, float32 seconds since start) + width * height * 3 RGB bytes.
"use strict";

const $ = (id) => document.getElementById(id);
const view = $("view");
const ctx = view.getContext("2d");
const scratch = document.createElement("canvas");
let ws = null;
let running = false;
let frames = 0;
let arrivals = [];       // arrival times (ms) of the frames of the last second
let startClicked = 0;
let firstFrameMs = null;

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function setRunning(on) {
  running = on;
  $("state").textContent = on ? "streaming" : "idle";
  $("start").disabled = on || !ws || ws.readyState !== WebSocket.OPEN;
  $("stop").disabled = !on;
  $("switch").disabled = !on;
  for (const id of ["steps", "mode", "seed"]) $(id).disabled = on;
}

function send(message) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

function drawFrame(buffer) {
  const head = new DataView(buffer, 0, 16);
  const index = head.getUint32(0, true);
  const w = head.getUint16(4, true);
  const h = head.getUint16(6, true);
  const chunkMs = head.getFloat32(8, true);
  const rgb = new Uint8Array(buffer, 16);
  if (rgb.length !== w * h * 3) return;
  const image = new ImageData(w, h);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    image.data[j] = rgb[i]; image.data[j + 1] = rgb[i + 1]; image.data[j + 2] = rgb[i + 2]; image.data[j + 3] = 255;
  }
  scratch.width = w; scratch.height = h;
  scratch.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(scratch, 0, 0, view.width, view.height);

  const now = performance.now();
  frames += 1;
  if (firstFrameMs === null) {
    firstFrameMs = now - startClicked;
    $("first").textContent = firstFrameMs.toFixed(0) + " ms";
  }
  arrivals.push(now);
  while (arrivals.length && arrivals[0] < now - 1000) arrivals.shift();
  $("frames").textContent = String(frames);
  $("fps").textContent = arrivals.length > 1
    ? ((arrivals.length - 1) * 1000 / (arrivals[arrivals.length - 1] - arrivals[0])).toFixed(1) : "-";
  $("latency").textContent = chunkMs.toFixed(1) + " ms/chunk";
  view.dataset.frame = String(index);
}

function onMessage(event) {
  if (typeof event.data !== "string") { drawFrame(event.data); return; }
  const msg = JSON.parse(event.data);
  switch (msg.type) {
    case "hello": {
      const steps = $("steps");
      steps.innerHTML = "";
      for (let s = 1; s <= msg.max_steps; s++) {
        const option = document.createElement("option");
        option.textContent = String(s);
        option.selected = s === msg.default_steps;
        steps.appendChild(option);
      }
      $("seed").max = String(msg.max_seed);
      status(`connected: ${msg.resolution} px at ${msg.fps} fps, ${msg.frames_per_chunk} frames a chunk`);
      setRunning(false);
      break;
    }
    case "started":
      setRunning(true);
      status(`streaming with ${msg.steps} step(s), ${msg.mode} mode, seed ${msg.seed}`);
      break;
    case "prompt":
      $("current").textContent = msg.prompt;
      break;
    case "stopped":
      setRunning(false);
      status(`stopped after ${msg.frames} frames`);
      break;
    case "busy":
      setRunning(false);
      status(msg.message, true);
      break;
    case "error":
      status(msg.message, true);
      break;
  }
}

function connect() {
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = onMessage;
  ws.onclose = () => { setRunning(false); $("state").textContent = "disconnected"; $("start").disabled = true; };
}

$("start").addEventListener("click", () => {
  frames = 0; arrivals = []; firstFrameMs = null; startClicked = performance.now();
  send({
    type: "start", prompt: $("prompt").value, steps: Number($("steps").value),
    mode: $("mode").value, seed: Number($("seed").value),
  });
});
$("switch").addEventListener("click", () => send({ type: "switch", prompt: $("prompt").value }));
$("stop").addEventListener("click", () => send({ type: "stop" }));
$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  $(running ? "switch" : "start").click();
});

connect();
