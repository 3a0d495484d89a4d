"""index.html beside a TensorFlow.js export: drop, pick or snap a photo and
see the top classes, in any browser, from any static web server.

Plain HTML and script, no build step. TensorFlow.js (core, CPU backend,
converter, 4.22) comes from ./tfjs/ when a copy sits beside the page, else
from a CDN. For automation the page takes ?image=URL (classify that image
once the model is loaded) and ?report=URL (POST the result there as JSON);
its <body data-status> goes loading -> ready -> done (or "error: ...").
"""

import html as html_lib
import json
from typing import Sequence, Tuple

PAGE = "index.html"
TFJS_VERSION = "4.22.0"
TFJS_FILES = ("tf-core.min.js", "tf-backend-cpu.min.js",
              "tf-converter.min.js")
CDN = "https://cdn.jsdelivr.net/npm/@tensorflow/{package}@{version}/dist/{file}"

_PACKAGES = {"tf-core.min.js": "tfjs-core",
             "tf-backend-cpu.min.js": "tfjs-backend-cpu",
             "tf-converter.min.js": "tfjs-converter"}

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem auto;
         max-width: 42rem; padding: 0 1rem; color: #222; }
  #drop { border: 2px dashed #999; border-radius: 8px; padding: 2rem;
          text-align: center; cursor: pointer; }
  #drop.over { border-color: #06c; background: #eef5ff; }
  #preview { max-width: 100%; max-height: 20rem; margin: 1rem 0;
             display: none; }
  video { max-width: 100%; display: none; }
  ol { padding-left: 1.5rem; }
  li { margin: .3rem 0; }
  .bar { display: inline-block; height: .7rem; background: #06c;
         margin-left: .5rem; vertical-align: middle; }
  #status { color: #666; }
</style>
</head>
<body data-status="loading">
<h1>__TITLE__</h1>
<p id="status">Loading the model...</p>
<div id="drop">Drop a photo here, or click to pick one
  <input id="file" type="file" accept="image/*" hidden></div>
<p><button id="camera" type="button">Use the camera</button>
   <button id="snap" type="button" hidden>Classify this frame</button></p>
<video id="video" autoplay playsinline muted></video>
<img id="preview" alt="the photo classified">
<ol id="results"></ol>
<canvas id="canvas" hidden></canvas>
<script>
const CONFIG = __CONFIG__;
const status = (text, state) => {
  document.getElementById("status").textContent = text;
  if (state) document.body.dataset.status = state;
};
function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = src; s.onload = resolve; s.onerror = reject;
    document.head.appendChild(s);
  });
}
async function loadTfjs() {
  // A local copy beside the page first (offline use), else the CDN.
  for (const [i, file] of CONFIG.tfjs.files.entries()) {
    try { await loadScript("tfjs/" + file); }
    catch (e) { await loadScript(CONFIG.tfjs.cdn[i]); }
  }
  await tf.setBackend("cpu");
}
let model = null;
async function classify(source) {
  const [h, w] = CONFIG.size;
  const canvas = document.getElementById("canvas");
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  // The whole picture, stretched to the model's size, as in training.
  ctx.drawImage(source, 0, 0, w, h);
  const probs = tf.tidy(() => model.predict(
      tf.expandDims(tf.cast(tf.browser.fromPixels(canvas), "float32"), 0)));
  const values = Array.from(await probs.data());
  probs.dispose();
  const top = values.map((p, i) => ({label: CONFIG.labels[i], probability: p}))
      .sort((a, b) => b.probability - a.probability).slice(0, 5);
  const list = document.getElementById("results");
  list.innerHTML = "";
  for (const row of top) {
    const li = document.createElement("li");
    li.dataset.label = row.label;
    li.dataset.probability = row.probability;
    li.textContent = row.label + " " + (100 * row.probability).toFixed(1) + "%";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = (10 * row.probability) + "rem";
    li.appendChild(bar);
    list.appendChild(li);
  }
  status("Top classes:", "done");
  return top;
}
function showImage(url) {
  return new Promise((resolve, reject) => {
    const img = document.getElementById("preview");
    img.onload = () => { img.style.display = "block"; resolve(img); };
    img.onerror = () => reject(new Error("cannot read that image"));
    img.src = url;
  });
}
async function classifyUrl(url) {
  try { return await classify(await showImage(url)); }
  catch (e) { status("Error: " + e.message, "error: " + e.message); }
}
function pick(file) {
  if (file) classifyUrl(URL.createObjectURL(file));
}
const drop = document.getElementById("drop");
const input = document.getElementById("file");
drop.onclick = () => input.click();
input.onchange = () => pick(input.files[0]);
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => {
  e.preventDefault(); drop.classList.remove("over");
  pick(e.dataTransfer.files[0]);
};
document.getElementById("camera").onclick = async () => {
  const video = document.getElementById("video");
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia(
        {video: {facingMode: "environment"}});
    video.style.display = "block";
    document.getElementById("snap").hidden = false;
  } catch (e) { status("No camera: " + e.message); }
};
document.getElementById("snap").onclick = () =>
    classify(document.getElementById("video"));
(async () => {
  const params = new URLSearchParams(location.search);
  try {
    await loadTfjs();
    model = await tf.loadGraphModel("model.json");
    status("Ready: drop a photo.", "ready");
  } catch (e) {
    status("Error: " + e, "error: " + e);
    return;
  }
  if (params.get("image")) {
    const top = await classifyUrl(params.get("image"));
    if (params.get("report")) {
      await fetch(params.get("report"), {method: "POST",
          body: JSON.stringify({status: document.body.dataset.status,
                                top: top || []})});
    }
  }
})();
</script>
</body>
</html>
"""


def page(labels: Sequence[str], input_size: Tuple[int, int],
         title: str = "retrain image classifier") -> str:
  """The page for a model of these labels and input size (H, W)."""
  config = {
      "labels": list(labels), "size": list(input_size),
      "tfjs": {"files": list(TFJS_FILES),
               "cdn": [CDN.format(package=_PACKAGES[f], version=TFJS_VERSION,
                                  file=f) for f in TFJS_FILES]},
  }
  # JSON inside <script>: "</" would end the script element.
  text = json.dumps(config).replace("</", "<\\/")
  return (_TEMPLATE.replace("__TITLE__", html_lib.escape(title))
          .replace("__CONFIG__", text))
