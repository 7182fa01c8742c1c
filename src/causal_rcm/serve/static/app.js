// causal-rcm stream page: one WebSocket, JSON control messages, binary RGB frames drawn on a canvas.
// Frame message: 16-byte little-endian header (uint32 index, uint16 width, uint16 height,
// float32 chunk compute ms, float32 seconds since start) + width * height * 3 RGB bytes.
// Play mode (hello.play set): no prompt; held keys choose an action of the game, sent when it changes;
// side by side, a frame holds the model's image and the emulator's, twice as wide.
// First frame: a chosen image file is POSTed to /api/image (checked there: type by content, size, dimensions);
// its id goes with the next start, whose stream then begins from that image.
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
let meanings = [];       // play mode: the game's action names, by index
const KEYS = { ArrowUp: "UP", ArrowDown: "DOWN", ArrowLeft: "LEFT", ArrowRight: "RIGHT", " ": "FIRE" };
const held = new Set();  // play mode: the KEYS parts held down
let sentAction = 0;      // the action the server steers with (a stream starts with NOOP, 0)
let pressedAt = null;    // when the last action change was sent, until its first frame arrives
let imageId = null;      // the uploaded first frame's id (null: start from noise)
let maxImageBytes = Infinity;

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
  for (const id of ["steps", "mode", "seed", "image"]) $(id).disabled = on;
  $("clear-image").disabled = on || imageId === null;
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

// The game's action for the held keys: the full combination if the game has it (e.g. UPRIGHTFIRE), else
// the most of it that it has, else NOOP.
function actionOf(keys) {
  const v = keys.has("UP") ? "UP" : keys.has("DOWN") ? "DOWN" : "";
  const h = keys.has("RIGHT") ? "RIGHT" : keys.has("LEFT") ? "LEFT" : "";
  const f = keys.has("FIRE") ? "FIRE" : "";
  for (const name of [v + h + f, v + h, h + f, v + f, h, v, f]) {
    if (name && meanings.includes(name)) return meanings.indexOf(name);
  }
  return Math.max(0, meanings.indexOf("NOOP"));
}

function steer() {
  const action = actionOf(held);
  if (!running || action === sentAction) return;
  sentAction = action;
  pressedAt = performance.now();
  send({ type: "action", action });
}

function onKey(event, down) {
  if (!document.body.classList.contains("play") || !(event.key in KEYS)) return;
  if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) event.target.blur();
  event.preventDefault();  // arrows and space would scroll the page
  if (down) held.add(KEYS[event.key]); else held.delete(KEYS[event.key]);
  steer();
}

function showAction(action) {
  $("action").textContent = meanings[action] || String(action);
  view.dataset.action = meanings[action] || String(action);
  document.querySelectorAll("#meanings li").forEach((li, i) => li.classList.toggle("on", i === action));
  if (pressedAt !== null && action === sentAction) {
    $("keylatency").textContent = (performance.now() - pressedAt).toFixed(0) + " ms";
    pressedAt = null;
  }
}

function setupPlay(play) {
  document.body.classList.add("play");
  document.body.classList.toggle("side", play.side_by_side);
  $("title").textContent = "causal-rcm: play " + (play.env || "the world model");
  $("prompt").value = "";
  $("game").textContent = play.env || "the world model";
  meanings = play.action_meanings;
  const list = $("meanings");
  list.innerHTML = "";
  for (const name of meanings) {
    const li = document.createElement("li");
    li.textContent = name;
    list.appendChild(li);
  }
  if (play.side_by_side) { view.width = 768; view.title = "model | emulator"; }
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
      maxImageBytes = msg.max_image_bytes || Infinity;
      if (msg.play) setupPlay(msg.play);
      status(`connected: ${msg.resolution} px at ${msg.fps} fps, ${msg.frames_per_chunk} frames a chunk`);
      setRunning(false);
      break;
    }
    case "started":
      setRunning(true);
      sentAction = 0;
      steer();  // keys already held
      status(`streaming with ${msg.steps} step(s), ${msg.mode} mode, seed ${msg.seed}` +
             (msg.image ? ", from the uploaded frame" : ""));
      break;
    case "action":
      showAction(msg.action);
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

function imageState(text, isError) {
  $("image-state").textContent = text;
  $("image-state").className = isError ? "error" : "";
}

function clearImage() {
  imageId = null;
  $("image").value = "";
  $("clear-image").disabled = true;
  imageState("none: the stream starts from noise");
}

async function uploadImage(file) {
  imageId = null;
  $("clear-image").disabled = true;
  if (file.size > maxImageBytes) {  // the server refuses it too; this saves sending it
    imageState(`${file.name} is over the ${(maxImageBytes / 2 ** 20).toFixed(0)} MiB limit of an image`, true);
    return;
  }
  imageState(`uploading ${file.name}...`);
  try {
    const response = await fetch("/api/image", { method: "POST", body: file });
    const reply = await response.json();
    if (!response.ok) { imageState(reply.error || `upload failed (${response.status})`, true); return; }
    imageId = reply.id;
    $("clear-image").disabled = running;
    imageState(`${file.name}: the first frame (${reply.width}x${reply.height})` + (reply.warning ? `; ${reply.warning}` : ""));
    view.dataset.image = imageId;
  } catch (err) {
    imageState(`upload failed: ${err}`, true);
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
    mode: $("mode").value, seed: Number($("seed").value), ...(imageId ? { image: imageId } : {}),
  });
});
$("switch").addEventListener("click", () => send({ type: "switch", prompt: $("prompt").value }));
$("image").addEventListener("change", () => { const file = $("image").files[0]; if (file) uploadImage(file); else clearImage(); });
$("clear-image").addEventListener("click", clearImage);
$("stop").addEventListener("click", () => send({ type: "stop" }));
document.addEventListener("keydown", (event) => onKey(event, true));
document.addEventListener("keyup", (event) => onKey(event, false));
window.addEventListener("blur", () => { held.clear(); steer(); });
$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  $(running ? "switch" : "start").click();
});

connect();
