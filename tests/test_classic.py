"""The classic tool's commands: --architecture and --model_dir (found,
extracted or downloaded), and the codelab's TFLite apps and scripts."""

import http.server
import io
import json
import os
import shutil
import tarfile
import threading

import numpy as np
import pytest
import tensorflow as tf

from retrain import pipeline
from retrain.config import HParams, ModelOptions
from retrain.deploy import export
from retrain.deploy.classifiers import load_classifier, tflite_interpreter
from retrain.errors import UserError
from retrain.features import classic_models
from retrain.features.extract import ImageDecoder
from retrain.features.model import load_feature_extractor
from tests import helpers

tf1 = tf.compat.v1
STEPS = HParams(how_many_training_steps=300, learning_rate=0.05)
VARIANTS = ("mobilenet_0.25_128", "mobilenet_0.25_224",
            "mobilenet_0.25_128_quantized", "mobilenet_0.25_224_quantized")


def _rounded(graph_bytes: bytes) -> bytes:
  """A float graph with its weights rounded to 256 levels each, as the
  classic archives' quantized_graph.pb stores them: the stand-in for
  0.25/224's (../shared has only 0.25/128's, the official file)."""
  gd = tf1.GraphDef.FromString(graph_bytes)
  for node in gd.node:
    if node.op != "Const" or node.attr["dtype"].type != tf.float32.as_datatype_enum:
      continue
    value = tf.make_ndarray(node.attr["value"].tensor)
    if value.size < 16:
      continue
    low, high = float(value.min()), float(value.max())
    step = (high - low) / 255 or 1.0
    rounded = (np.round((value - low) / step) * step + low).astype(np.float32)
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(rounded))
  return gd.SerializeToString()


def _read(path) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _tgz(files) -> bytes:
  data = io.BytesIO()
  with tarfile.open(fileobj=data, mode="w:gz") as tar:
    for name, content in sorted(files.items()):
      info = tarfile.TarInfo(name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return data.getvalue()


def _classic_files(shared, size):
  """The files of mobilenet_v1_0.25_<size>_frozen.tgz, from ../shared."""
  folder = os.path.join(shared, "models", f"mobilenet_v1_025_{size}")
  small = os.path.join(shared, "models", "mobilenet_v1_025_128")
  frozen = _read(os.path.join(folder, "frozen_graph.pb"))
  prefix = f"mobilenet_v1_0.25_{size}/"
  return {
      prefix + "frozen_graph.pb": frozen,
      prefix + "quantized_graph.pb": (
          _read(os.path.join(small, "quantized_graph.pb")) if size == 128
          else _rounded(frozen)),
      prefix + "labels.txt": _read(os.path.join(small, "labels.txt")),
  }


@pytest.fixture(scope="module")
def classic(shared, tmp_path_factory):
  """tf_files/ as the codelab lays it out: models/ holding 0.25_128 as the
  classic tool downloaded it (the .tgz only) and 0.25_224 as it left it
  (extracted, no .tgz); flower_photos."""
  root = tmp_path_factory.mktemp("codelab")
  models = root / "tf_files" / "models"
  models.mkdir(parents=True)
  (models / "mobilenet_v1_0.25_128_frozen.tgz").write_bytes(
      _tgz(_classic_files(shared, 128)))
  for name, content in _classic_files(shared, 224).items():
    path = models / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
  os.symlink(os.path.join(shared, "datasets", "flower_photos_dev"),
             root / "tf_files" / "flower_photos")
  return root


def test_the_codelab_command_runs_unchanged(classic, shared, tmp_path):
  """The codelab's command line, verbatim but for the model name (its 0.50
  is not in ../shared) and the photos: trains, exports, and classifies like
  the same graph passed by --graph."""
  proc = helpers.run_cli([
      "--bottleneck_dir=tf_files/bottlenecks",
      "--how_many_training_steps=500", "--model_dir=tf_files/models/",
      "--summaries_dir=tf_files/training_summaries/mobilenet_0.25_128",
      "--output_graph=tf_files/retrained_graph.pb",
      "--output_labels=tf_files/retrained_labels.txt",
      "--architecture=mobilenet_0.25_128",
      "--image_dir=tf_files/flower_photos"], cwd=str(classic))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "--architecture=mobilenet_0.25_128" in proc.stderr
  assert "MobilenetV1/Predictions/Reshape:0" in proc.stderr  # Said in log.
  models = classic / "tf_files" / "models"
  assert (models / "mobilenet_v1_0.25_128" / "frozen_graph.pb").is_file()
  assert not [n for n in os.listdir(models) if n.startswith(".")]
  out = classic / "tf_files"
  with open(out / "report.json") as f:
    classic_accuracy = json.load(f)["accuracy"]
  config = helpers.run_config(tmp_path, str(out / "flower_photos"))
  by_graph = pipeline.run(config, HParams(how_many_training_steps=500),
                          ModelOptions(graph=os.path.join(
                              shared, "models", "mobilenet_v1_025_128",
                              "frozen_graph.pb")))
  # The same model, data and steps: the same accuracy, up to one photo
  # (bottlenecks computed in batches of another size differ by 1e-5).
  assert abs(classic_accuracy - by_graph.test_accuracy) <= 1.01 / len(
      by_graph.test_truth)
  assert classic_accuracy > 0.6
  # The graph classifies new photos with label_image.
  label = helpers.run_cli(["--graph=tf_files/retrained_graph.pb",
                           "--labels=tf_files/retrained_labels.txt",
                           "--image=tf_files/flower_photos/daisy"],
                          module="retrain.label_image", cwd=str(classic))
  assert label.returncode == 0, label.stderr[-2000:]


@pytest.mark.parametrize("architecture", VARIANTS)
def test_architecture_loads_the_graph_it_names(classic, shared,
                                               architecture):
  """Each classic layout (.tgz, extracted folder; float, quantized) gives
  exactly the model --graph gives for the same file."""
  models = str(classic / "tf_files" / "models")
  fx = load_feature_extractor(ModelOptions(architecture=architecture,
                                           model_dir=models))
  size = int(architecture.split("_")[2])
  name = ("quantized_graph.pb" if architecture.endswith("quantized")
          else "frozen_graph.pb")
  path = os.path.join(models, f"mobilenet_v1_0.25_{size}", name)
  assert fx.source == path
  same = load_feature_extractor(ModelOptions(graph=path))
  assert fx.graph_def == same.graph_def
  assert (fx.input_tensor, fx.bottleneck_tensor, fx.input_size,
          fx.input_mean, fx.input_std, fx.bottleneck_size) == (
              same.input_tensor, same.bottleneck_tensor, (size, size), 127.5,
              127.5, 256)
  assert _read(path) == _classic_files(shared, size)[
      f"mobilenet_v1_0.25_{size}/{name}"]


@pytest.mark.parametrize("architecture", ["mobilenet_0.25_224_quantized",
                                          "mobilenet_0.25_128"])
def test_architecture_trains_and_exports(classic, tmp_path, architecture):
  config = helpers.run_config(
      tmp_path, str(classic / "tf_files" / "flower_photos"))
  result = pipeline.run(config, STEPS, ModelOptions(
      architecture=architecture,
      model_dir=str(classic / "tf_files" / "models")))
  assert result.test_accuracy > 0.6
  graph = load_classifier(config.output_graph)
  paths = result.test_paths[:10]
  _, probs, skipped = graph.classify(paths)
  assert not skipped
  np.testing.assert_allclose(probs, result.test_probabilities[:10],
                             atol=1e-4)


@pytest.mark.parametrize("name", ["resnet_50", "mobilenet_0.30_224",
                                  "mobilenet_1.0_100", "mobilenet_1.0_224_x"])
def test_unknown_architecture_lists_the_valid_names(name):
  with pytest.raises(UserError) as e:
    classic_models.parse(name)
  assert "inception_v3" in str(e.value) and "mobilenet_<1.0" in str(e.value)


def test_classic_names_mean_the_classic_files():
  inception = classic_models.parse("Inception_V3")
  assert (inception.archive, inception.graph_file, inception.input_tensor,
          inception.input_size, inception.input_mean) == (
              "image/imagenet/inception-2015-12-05.tgz",
              "classify_image_graph_def.pb", "Mul:0", 299, 128.0)
  quantized = classic_models.parse("mobilenet_0.50_160_quantized")
  assert (quantized.archive, quantized.graph_file, quantized.input_size) == (
      "mobilenet_v1_0.50_160_frozen.tgz",
      "mobilenet_v1_0.50_160/quantized_graph.pb", 160)
  assert classic_models.download_url(quantized) == (
      "https://download.tensorflow.org/models/"
      "mobilenet_v1_0.50_160_frozen.tgz")


# -------------------------------------------------------------- downloads --

class _Server:
  """An HTTP server on 127.0.0.1 serving one archive: whole, cut short
  (the announced length, half the bytes) or as a server error."""

  def __init__(self, archive_name: str, content: bytes):
    self.mode = "ok"
    self.requests = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # pylint: disable=invalid-name
        server.requests.append(self.path)
        if self.path != "/" + archive_name or server.mode == "error":
          self.send_error(500 if server.mode == "error" else 404)
          return
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        body = content if server.mode == "ok" else content[:len(content) // 2]
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
    self.thread = threading.Thread(target=self.httpd.serve_forever,
                                   daemon=True)
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server(shared, monkeypatch):
  model = classic_models.parse("mobilenet_0.25_128")
  s = _Server(model.archive, _tgz(_classic_files(shared, 128)))
  monkeypatch.setenv(classic_models.URL_ENVIRONMENT, s.url)
  yield s
  s.close()


def test_download_extracts_and_is_reused_without_a_request(server, tmp_path):
  model = classic_models.parse("mobilenet_0.25_128")
  models = tmp_path / "models"
  path = classic_models.locate(model, str(models))
  assert server.requests == ["/mobilenet_v1_0.25_128_frozen.tgz"]
  assert path == str(models / "mobilenet_v1_0.25_128" / "frozen_graph.pb")
  assert sorted(os.listdir(models)) == ["mobilenet_v1_0.25_128",
                                        "mobilenet_v1_0.25_128_frozen.tgz"]
  assert classic_models.locate(model, str(models)) == path
  shutil.rmtree(models / "mobilenet_v1_0.25_128")  # The .tgz stays.
  assert classic_models.locate(model, str(models)) == path
  assert len(server.requests) == 1  # Both reruns: no request.
  fx = load_feature_extractor(ModelOptions(architecture=model.name,
                                           model_dir=str(models)))
  assert fx.bottleneck_size == 256


@pytest.mark.parametrize("mode,reason", [("truncated", "bytes"),
                                         ("error", "HTTP 500")])
def test_failed_download_leaves_nothing_and_says_what_to_do(
    server, tmp_path, mode, reason):
  server.mode = mode
  models = tmp_path / "models"
  with pytest.raises(UserError) as e:
    classic_models.locate(classic_models.parse("mobilenet_0.25_128"),
                          str(models))
  message = str(e.value)
  assert "\n" not in message and reason in message, message
  assert "mobilenet_v1_0.25_128_frozen.tgz" in message
  assert f"put it in {models}" in message
  assert os.listdir(models) == []


def test_offline_is_one_line_naming_the_file_and_where_to_put_it(
    tmp_path, color_images):
  closed = http.server.HTTPServer(("127.0.0.1", 0),
                                  http.server.BaseHTTPRequestHandler)
  url = f"http://127.0.0.1:{closed.server_address[1]}/"
  closed.server_close()  # Nothing listens there now.
  proc = helpers.run_cli(
      ["--architecture=mobilenet_0.25_224", f"--model_dir={tmp_path / 'm'}",
       f"--image_dir={color_images}", f"--output_graph={tmp_path / 'g.pb'}",
       f"--bottleneck_dir={tmp_path / 'b'}"],
      env_updates={classic_models.URL_ENVIRONMENT: url})
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("retrain: error: "), lines
  assert "mobilenet_v1_0.25_224_frozen.tgz" in lines[0]
  assert f"put it in {tmp_path / 'm'}" in lines[0]
  assert not os.path.exists(tmp_path / "g.pb")


@pytest.mark.parametrize("flags,needle", [
    (["--architecture=mobilenet_0.25_128", "--graph=x.pb"], "--graph alone"),
    (["--architecture=alexnet"], "mobilenet_<1.0|0.75|0.50|0.25>"),
])
def test_architecture_flag_errors(flags, needle, tmp_path, color_images):
  proc = helpers.run_cli(flags + [f"--image_dir={color_images}",
                                  f"--model_dir={tmp_path}"])
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and needle in lines[0], lines


# ------------------------------------------------------- the codelab's apps --

@pytest.fixture(scope="module")
def trained_224(classic, tmp_path_factory):
  """A run on the codelab's 224 model with the TFLite export for its apps
  (--tflite_input=model_input) and the default one beside it."""
  tmp = tmp_path_factory.mktemp("codelab_tflite")
  options = ModelOptions(architecture="mobilenet_0.25_224",
                         model_dir=str(classic / "tf_files" / "models"))
  images = str(classic / "tf_files" / "flower_photos")
  config = helpers.run_config(tmp, images,
                              tflite_output=str(tmp / "graph.lite"),
                              tflite_input="model_input")
  result = pipeline.run(config, STEPS, options)
  return config, result, tmp


def _codelab_client(path: str, pixels: np.ndarray, mean: float, std: float):
  """What the codelab's Android and iOS apps do: scale RGB values, feed the
  model's only input, read its only output (probabilities)."""
  interpreter, _ = tflite_interpreter(path)
  inp = interpreter.get_input_details()[0]
  out = interpreter.get_output_details()[0]
  rows = []
  for image in pixels:
    interpreter.set_tensor(inp["index"],
                           ((image - mean) / std)[None].astype(np.float32))
    interpreter.invoke()
    rows.append(np.array(interpreter.get_tensor(out["index"])[0]))
  return np.array(rows)


def _pixels(paths, size):
  decoder = ImageDecoder((size, size))
  try:
    return np.stack([decoder.decode(p)[0] for p in paths])
  finally:
    decoder.close()


def test_codelab_app_runs_the_model_input_export(trained_224):
  config, result, _ = trained_224
  helpers.require("ai_edge_litert")
  with open(os.path.splitext(config.tflite_output)[0] + ".json") as f:
    meta = json.load(f)
  assert meta["inputs"]["model_input"]["name"] == "input"
  assert (meta["inputs"]["model_input"]["mean"],
          meta["inputs"]["model_input"]["std"]) == (127.5, 127.5)
  paths = result.test_paths
  graph = load_classifier(config.output_graph)
  _, reference, _ = graph.classify(paths)
  pixels = _pixels(paths, 224)
  exact = _codelab_client(config.tflite_output, pixels, 127.5, 127.5)
  np.testing.assert_allclose(exact, reference, atol=1e-4)
  app = _codelab_client(config.tflite_output, pixels, 128.0, 128.0)
  agree = np.mean(app.argmax(1) == reference.argmax(1))
  assert agree >= 0.95, agree
  # label_image scales for it, from the JSON.
  _, ours, _ = load_classifier(config.tflite_output).classify(paths)
  np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_codelab_tflite_convert_command_converts_our_graph(trained_224):
  """README's tflite_convert line (the codelab's, as it runs on TF 2.21)."""
  config, result, tmp = trained_224
  helpers.require("ai_edge_litert")
  lite = str(tmp / "converted.lite")
  proc = helpers.run_cli([
      "--enable_v1_converter", f"--graph_def_file={config.output_graph}",
      f"--output_file={lite}", "--input_arrays=input",
      "--output_arrays=final_result", "--input_shapes=1,224,224,3"],
      module="tensorflow.lite.python.tflite_convert")
  assert proc.returncode == 0, proc.stderr[-3000:]
  paths = result.test_paths
  _, reference, _ = load_classifier(config.output_graph).classify(paths)
  app = _codelab_client(lite, _pixels(paths, 224), 127.5, 127.5)
  np.testing.assert_allclose(app, reference, atol=1e-4)


def test_exported_graph_keeps_the_codelab_evaluate_names(trained_224):
  """scripts/evaluate.py feeds input:0 and reads final_result:0 and the
  logits final_training_ops/Wx_plus_b/add:0."""
  config, result, _ = trained_224
  gd = tf1.GraphDef.FromString(_read(config.output_graph))
  graph = tf.Graph()
  with graph.as_default():
    tf1.import_graph_def(gd, name="")
  pixels = _pixels(result.test_paths[:8], 224)
  with tf1.Session(graph=graph) as sess:
    logits, probs = sess.run(
        [export.LOGITS + ":0", "final_result:0"],
        {"input:0": (pixels - 127.5) / 127.5})
  np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), probs,
                             atol=1e-6)
  np.testing.assert_allclose(probs, result.test_probabilities[:8],
                             atol=1e-4)
