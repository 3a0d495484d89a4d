"""Where apps run today: MediaPipe Tasks on the .tflite exports (metadata
inside), TensorFlow.js in Node (cpu, wasm) and the demo page in Chromium."""

import http.server
import json
import os
import shutil
import subprocess
import threading

import numpy as np
import pytest
import tensorflow as tf

from retrain import pipeline
from retrain.config import HParams, ModelOptions
from retrain.deploy import tflite_metadata, tfjs
from retrain.deploy.classifiers import load_classifier
from tests import helpers

tf1 = tf.compat.v1
TFJS_DIR = os.path.join(helpers.REPO, "tests", "tfjs")
NODE_MODULES = os.path.join(TFJS_DIR, "node_modules")
STEPS = HParams(how_many_training_steps=300, learning_rate=0.05)
# float16 weights move this small MobileNet's probabilities by up to 0.011
# (measured on these 20 photos; one borderline photo goes 0.377 -> 0.388):
# half precision itself, whichever tensors are kept in float32.
FLOAT16 = 2e-2
# (--tflite_quantize, --tfjs_quantize) of the three runs.
RUNS = (("none", "none"), ("dynamic", "float16"), ("int8", "uint8"))


@pytest.fixture(scope="module")
def exports(shared, tmp_path_factory):
  """Three runs on the dev flowers (MobileNet 0.25/128, one cache, so one
  trained layer): each with a .tflite and a tfjs export of its own
  quantization. Returns {tflite quantization: (config, result)}."""
  tmp = tmp_path_factory.mktemp("apps")
  flowers = os.path.join(shared, "datasets", "flower_photos_dev")
  options = ModelOptions(graph=os.path.join(
      shared, "models", "mobilenet_v1_025_128", "frozen_graph.pb"))
  runs = {}
  for lite, js in RUNS:
    config = helpers.run_config(
        tmp / lite, flowers, bottleneck_dir=str(tmp / "bottlenecks"),
        tflite_output=str(tmp / lite / "model.tflite"),
        tflite_quantize=lite, tfjs_output=str(tmp / lite / "tfjs"),
        tfjs_quantize=js)
    runs[lite] = (config, pipeline.run(config, STEPS, options))
  return runs


@pytest.fixture(scope="module")
def photos(exports, tmp_path_factory):
  """20 test photos already at the model's size, as PNG (lossless): every
  runtime then sees the same pixels. Returns (paths, uint8 [n, H, W, 3])."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from retrain.features.extract import ImageDecoder  # pylint: disable=g-import-not-at-top
  config, result = exports["none"]
  folder = tmp_path_factory.mktemp("sized")
  decoder = ImageDecoder((128, 128))
  try:
    pixels = np.stack([np.clip(np.round(decoder.decode(p)[0]), 0, 255)
                       for p in result.test_paths[:20]]).astype(np.uint8)
  finally:
    decoder.close()
  paths = []
  for i, image in enumerate(pixels):
    path = str(folder / f"{i:02d}.png")
    Image.fromarray(image).save(path)
    paths.append(path)
  del config
  return paths, pixels


def test_one_trained_layer_for_all_runs(exports):
  weights = [r.final_weights for _, r in exports.values()]
  for w in weights[1:]:
    np.testing.assert_array_equal(w, weights[0])


@pytest.mark.parametrize("quantize", [r[0] for r in RUNS])
def test_tflite_carries_its_metadata_and_labels(exports, quantize):
  config, result = exports[quantize]
  with open(config.tflite_output, "rb") as f:
    model = f.read()
  meta = tflite_metadata.read_metadata(model)
  assert meta is not None and meta[4:8] == tflite_metadata.IDENTIFIER
  files = tflite_metadata.associated_files(model)
  assert files[tflite_metadata.LABELS_FILE].decode().split("\n")[:-1] == (
      result.labels)
  described = json.loads(files[tflite_metadata.DESCRIPTION_FILE])
  assert described["test_accuracy"] == result.test_accuracy
  assert described["quantization"] == quantize


@pytest.mark.parametrize("quantize", [r[0] for r in RUNS])
def test_mediapipe_classifies_the_tflite_exports(exports, photos, quantize):
  """MediaPipe Tasks' ImageClassifier loads each export with no other file,
  names the classes, and equals label_image on the same .tflite (within
  1e-5 for float; top-1 for all) on images already at the model's size."""
  config, result = exports[quantize]
  paths, _ = photos
  _, ours, skipped = load_classifier(config.tflite_output).classify(paths)
  assert not skipped
  theirs, names = helpers.mediapipe_probabilities(config.tflite_output,
                                                  paths, result.labels)
  assert all(n == set(result.labels) for n in names)
  np.testing.assert_array_equal(theirs.argmax(1), ours.argmax(1))
  if quantize == "none":
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_tflite_with_metadata_still_runs_on_litert(exports, photos):
  """The metadata and the appended labels change nothing for LiteRT."""
  helpers.require("ai_edge_litert")
  config, result = exports["none"]
  paths, _ = photos
  _, probs, _ = load_classifier(config.output_graph).classify(paths)
  _, lite, _ = load_classifier(config.tflite_output).classify(paths)
  np.testing.assert_allclose(lite, probs, atol=1e-4)
  del result


def test_tfjs_folder_rebuilds_the_frozen_graph_in_tensorflow(exports, photos):
  """Python only: model.json + shards -> GraphDef -> TensorFlow gives the
  frozen graph's answers (float32 weights), and float16 within FLOAT16."""
  paths, pixels = photos
  x = pixels.astype(np.float32)
  config, result = exports["none"]
  _, reference, _ = load_classifier(config.output_graph).classify(paths)
  for quantize, atol in (("none", 1e-5), ("dynamic", FLOAT16)):
    folder = exports[quantize][0].tfjs_output
    graph = tf.Graph()
    with graph.as_default():
      tf1.import_graph_def(tfjs.read_graph_def(folder), name="")
    with tf1.Session(graph=graph) as sess:
      got = sess.run("final_result:0", {"image:0": x})
    np.testing.assert_allclose(got, reference, atol=atol)
  with open(os.path.join(config.tfjs_output, tfjs.MODEL_JSON)) as f:
    content = json.load(f)
  assert content["format"] == "graph-model"
  assert content["userDefinedMetadata"]["labels"] == result.labels
  assert content["userDefinedMetadata"]["input_size"] == [128, 128]
  ops = {n["op"] for n in content["modelTopology"]["node"]}
  assert "PlaceholderWithDefault" not in ops and "DecodeJpeg" not in ops
  assert not [n for n in content["modelTopology"]["node"]
              if n["op"] == "Const" and "value" in n.get("attr", {})]


def _node():
  """The node binary and installed tfjs packages, or a skip (a failure
  under CI=true, where .ci/run installs both)."""
  node = shutil.which("node")
  missing = None
  if not node:
    missing = "node is not installed (Debian: apt-get install nodejs npm)"
  elif not os.path.isdir(os.path.join(NODE_MODULES, "@tensorflow")):
    missing = f"tfjs is not installed: cd {TFJS_DIR} && npm ci"
  if missing:
    if os.environ.get("CI") == "true":
      pytest.fail(missing)
    pytest.skip(missing)
  return node


@pytest.mark.parametrize("backend", ["cpu", "wasm"])
def test_tfjs_export_runs_in_node(exports, photos, tmp_path, backend):
  """The export in tfjs 4.22 (pure JavaScript and wasm packages) on exact
  pixels: within 1e-5 of label_image, same top-1; float16 weights within
  FLOAT16; uint8 weights as the run's own check measured them (this small
  MobileNet does not survive per-tensor 8-bit weights: the check says so)."""
  node = _node()
  paths, pixels = photos
  config, result = exports["none"]
  _, reference, _ = load_classifier(config.output_graph).classify(paths)
  x = tmp_path / "pixels.f32"
  pixels.astype("<f4").tofile(x)
  for quantize, js in RUNS:
    out = tmp_path / f"{js}.f32"
    proc = subprocess.run(
        [node, os.path.join(TFJS_DIR, "run_model.js"),
         exports[quantize][0].tfjs_output, str(x),
         json.dumps(list(pixels.shape)), backend, str(out)],
        capture_output=True, text=True, timeout=300, cwd=TFJS_DIR)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert said["backend"] == backend and said["labels"] == result.labels
    got = np.fromfile(out, "<f4").reshape(reference.shape)
    if js == "none":
      np.testing.assert_allclose(got, reference, atol=1e-5)
      np.testing.assert_array_equal(got.argmax(1), reference.argmax(1))
    elif js == "float16":
      np.testing.assert_allclose(got, reference, atol=FLOAT16)
      assert np.mean(got.argmax(1) == reference.argmax(1)) >= 0.95
    else:  # uint8 weights: what the run's own check recorded.
      with open(os.path.join(exports[quantize][0].tfjs_output,
                             "retrain.json")) as f:
        check = json.load(f)["quantization_check"]
      assert check["images"] == min(50, len(result.test_paths))
      agree = np.mean(got.argmax(1) == reference.argmax(1))
      assert abs(agree - check["top1_agreement"]) <= 0.35, (agree, check)


class _PageServer:
  """Serves the tfjs export folder, tfjs itself under /tfjs/ (from
  node_modules, as a local copy beside the page would be), the photos, and
  takes the page's report (POST /report)."""

  def __init__(self, folder, photos_dir):
    self.reports = []
    done = threading.Event()
    self.done = done
    server = self
    files = {f"/tfjs/{name}": os.path.join(
        NODE_MODULES, "@tensorflow", package, "dist", name)
             for name, package in (
                 ("tf-core.min.js", "tfjs-core"),
                 ("tf-backend-cpu.min.js", "tfjs-backend-cpu"),
                 ("tf-converter.min.js", "tfjs-converter"))}

    class Handler(http.server.SimpleHTTPRequestHandler):
      def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=folder, **kwargs)

      def translate_path(self, path):
        path = path.split("?")[0]
        if path in files:
          return files[path]
        if path.startswith("/photos/"):
          return os.path.join(photos_dir, os.path.basename(path))
        return super().translate_path(path)

      def do_POST(self):  # pylint: disable=invalid-name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server.reports.append(json.loads(body))
        self.send_response(204)
        self.end_headers()
        done.set()

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


def test_demo_page_classifies_a_photo_in_chromium(exports, photos, tmp_path):
  """index.html, served from a loopback server with tfjs beside it: opened
  with ?image=, it loads the model, classifies the photo and reports the
  top classes, which are label_image's."""
  browser = shutil.which("chromium") or shutil.which("chromium-browser")
  if not browser:
    if os.environ.get("CI") == "true":
      pytest.fail("chromium is not installed (apt-get install chromium)")
    pytest.skip("chromium is not installed")
  _node()  # tfjs for the page comes from tests/tfjs/node_modules.
  config, result = exports["none"]
  paths, _ = photos
  _, reference, _ = load_classifier(config.output_graph).classify(paths[:1])
  server = _PageServer(config.tfjs_output, os.path.dirname(paths[0]))
  page = (f"{server.url}index.html?image=/photos/"
          f"{os.path.basename(paths[0])}&report=/report")
  proc = subprocess.Popen(
      [browser, "--headless", "--no-sandbox", "--disable-gpu",
       "--disable-quic", "--no-first-run", "--disable-background-networking",
       "--disable-component-update", "--disable-sync",
       f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0",
       page], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    reported = server.done.wait(120)
  finally:
    proc.kill()
    _, stderr = proc.communicate()
    server.close()
  assert reported, stderr.decode(errors="replace")[-3000:]
  report = server.reports[0]
  assert report["status"] == "done", report
  top = report["top"]
  assert top[0]["label"] == result.labels[int(reference[0].argmax())]
  shown = {row["label"]: row["probability"] for row in top}
  for i, label in enumerate(result.labels):
    if label in shown:
      assert abs(shown[label] - reference[0, i]) < 1e-4, (label, shown)


@pytest.mark.parametrize("model", ["tfhub_mobilenet", "efficientnet_lite0",
                                   "fine_tuned_mobilenet", "two_models"])
def test_tfjs_export_of_other_models_runs_in_node(shared, tmp_path, model):
  """A TF-Hub SavedModel, EfficientNet-Lite0 (residual blocks, another
  family) and a fine-tuned model (trained values written back into the
  frozen graph, as stage 2 exports it) export to tfjs and run in Node like
  the frozen graph export does in TensorFlow (a random new layer: no
  training needed to compare)."""
  node = _node()
  from retrain.deploy import export  # pylint: disable=g-import-not-at-top
  from retrain.features.model import load_feature_extractor  # pylint: disable=g-import-not-at-top
  models = os.path.join(shared, "models")
  if model == "tfhub_mobilenet":
    options = ModelOptions(tfhub_module=os.path.join(
        models, "mobilenet_v1_025_128", "saved_model"))
  elif model == "two_models":  # One classifier on both (resized inside).
    options = (ModelOptions(graph=os.path.join(
        models, "mobilenet_v1_025_224", "frozen_graph.pb")),
               ModelOptions(tfhub_module=os.path.join(
                   models, "mobilenet_v1_025_128", "saved_model")))
  elif model == "fine_tuned_mobilenet":
    options = ModelOptions(graph=os.path.join(
        models, "mobilenet_v1_025_128", "frozen_graph.pb"))
  else:
    options = ModelOptions(
        graph=os.path.join(models, "efficientnet_lite0", "frozen_graph.pb"),
        input_tensor="input:0", bottleneck_tensor="feature_vector:0",
        input_mean=127.0, input_std=128.0)
  fx = load_feature_extractor(options, str(tmp_path / "cache"))
  rng = np.random.default_rng(0)
  if model == "fine_tuned_mobilenet":
    import dataclasses  # pylint: disable=g-import-not-at-top
    from retrain.features import cut as cuts  # pylint: disable=g-import-not-at-top
    from retrain.training import top as tops  # pylint: disable=g-import-not-at-top
    cut = cuts.choose_cut(fx.graph_def, fx.bottleneck_tensor, layers=2)
    values = {t: v * np.float32(1 + rng.normal(0, 0.05, v.shape))
              for t, v in tops.constant_values(
                  fx.graph_def, cut.trainable()).items()}
    fx = dataclasses.replace(fx, graph_def=tops.frozen_with_values(
        fx.graph_def, values))
  weights = rng.normal(0, 0.05, (fx.bottleneck_size, 3)).astype(np.float32)
  biases = np.zeros(3, np.float32)
  folder = str(tmp_path / "tfjs")
  tfjs.write_tfjs(folder, fx, weights, biases, ["a", "b", "c"], {})
  h, w = fx.input_size
  pixels = rng.uniform(0, 255, (2, h, w, 3)).astype(np.float32)
  graph = tf.Graph()
  with graph.as_default():
    tf1.import_graph_def(export.build_inference_graph_def(fx, weights,
                                                          biases), name="")
  with tf1.Session(graph=graph) as sess:
    reference = sess.run("final_result:0", {"image:0": pixels})
  x = tmp_path / "pixels.f32"
  pixels.astype("<f4").tofile(x)
  out = tmp_path / "out.f32"
  proc = subprocess.run(
      [node, os.path.join(TFJS_DIR, "run_model.js"), folder, str(x),
       json.dumps(list(pixels.shape)), "cpu", str(out)],
      capture_output=True, text=True, timeout=600, cwd=TFJS_DIR)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = np.fromfile(out, "<f4").reshape(reference.shape)
  np.testing.assert_allclose(got, reference, atol=1e-5)
