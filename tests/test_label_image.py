"""label_image's TFLite path: LiteRT first, Pillow decoding without TensorFlow."""

import io
import os

import numpy as np
import pytest

from retrain.data import pil_preprocess, preprocess
from retrain.deploy import classifiers
from retrain.features import extract
from tests import helpers


def _photos(tmp_path):
  """JPEGs and PNGs of several sizes, some needing DCT scaling, one gray."""
  from PIL import Image
  rng = np.random.default_rng(3)
  paths = []
  for i, (h, w) in enumerate([(480, 640), (1200, 900), (100, 90),
                              (300, 260), (128, 128)]):
    smooth = np.cumsum(rng.normal(size=(h, w, 3)), axis=1)
    pixels = np.uint8(np.clip(128 + smooth * 4, 0, 255))
    image = Image.fromarray(pixels)
    for fmt in ("JPEG", "PNG"):
      path = tmp_path / f"{i}.{fmt.lower()}"
      image.save(path, fmt, quality=90)
      paths.append(str(path))
  gray = tmp_path / "gray.png"
  Image.fromarray(np.uint8(rng.integers(0, 255, (200, 150)))).save(gray)
  return paths + [str(gray)]


@pytest.mark.parametrize("rule", ["fast", "exact"])
def test_pillow_decoder_follows_the_training_rule(tmp_path, rule):
  """Same pixels as TensorFlow's decode and resize, up to JPEG rounding."""
  r = preprocess.PREPROCESSINGS[rule]
  size = (128, 128)
  ours = pil_preprocess.PilDecoder(size, r.jpeg_dct_keep, r.antialias_over)
  reference = extract.ImageDecoder(size, rule=r)
  try:
    for path in _photos(tmp_path):
      data = open(path, "rb").read()
      got, error = ours.decode_bytes(data)
      want, _ = reference.decode_bytes(data)
      assert error is None and got.shape == (128, 128, 3)
      diff = np.abs(got - want)
      if path.endswith(".png"):  # Lossless: only float rounding.
        assert diff.max() < 0.01, (path, diff.max())
      else:  # Two JPEG decoders (and DCT scaling) round differently.
        assert diff.mean() < 1.5 and diff.max() < 40, (path, diff.mean(),
                                                        diff.max())
  finally:
    reference.close()


def test_resize_matches_tensorflow():
  import tensorflow as tf
  rng = np.random.default_rng(0)
  for shape, size in [((300, 400, 3), (128, 128)), ((100, 90, 3), (128, 96)),
                      ((1000, 700, 3), (224, 224)), ((260, 250, 3), (128, 128))]:
    image = rng.uniform(0, 255, shape).astype(np.float32)
    for over in (2.0, 1.0):
      shrink = max(shape[0] / size[0], shape[1] / size[1])
      want = tf.clip_by_value(tf.image.resize(
          image, size, "bilinear", antialias=bool(shrink > over)), 0, 255)
      got = pil_preprocess.resize(image, size, over)
      np.testing.assert_allclose(got, want.numpy(), atol=5e-3)


def test_pillow_decoder_reports_bad_images():
  decoder = pil_preprocess.PilDecoder((64, 64))
  image, error = decoder.decode_bytes(b"not an image at all")
  assert image is None and error
  png = io.BytesIO()
  from PIL import Image
  Image.new("RGB", (10, 10)).save(png, "PNG")
  truncated = png.getvalue()[:40]
  image, error = decoder.decode_bytes(truncated)
  assert image is None and "decode" in error


def test_litert_is_used_when_installed(tmp_path):
  helpers.require("ai_edge_litert")
  path = _tiny_tflite(tmp_path)
  _, runtime = classifiers.tflite_interpreter(path)
  assert runtime == "ai_edge_litert"


def test_tf_lite_without_litert(tmp_path, monkeypatch):
  import sys
  path = _tiny_tflite(tmp_path)
  monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
  monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
  interpreter, runtime = classifiers.tflite_interpreter(path)
  assert runtime == "tf.lite"
  assert interpreter.get_input_details()[0]["shape"].tolist() == [1, 4]


def test_without_litert_or_tensorflow_says_what_to_install(tmp_path,
                                                           monkeypatch):
  import sys
  from retrain.errors import UserError
  path = _tiny_tflite(tmp_path)
  for name in ("tensorflow", "ai_edge_litert", "ai_edge_litert.interpreter"):
    monkeypatch.setitem(sys.modules, name, None)
  with pytest.raises(UserError, match="pip install ai-edge-litert pillow"):
    classifiers.tflite_interpreter(path)


def test_graph_export_without_tensorflow_is_one_line(tmp_path):
  graph = tmp_path / "g.pb"
  graph.write_bytes(b"x")
  proc = helpers.run_without_tensorflow([f"--model={graph}", "--image=x.jpg"])
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"label_image: error: --model={graph}: running a frozen graph or "
      "SavedModel needs TensorFlow (pip install tensorflow); a .tflite "
      "export runs without it"]


def _tiny_tflite(tmp_path) -> str:
  """A TFLite model of y = x * 2, float32 [1, 4]."""
  import tensorflow as tf
  fn = tf.function(lambda x: x * 2.0,
                   input_signature=[tf.TensorSpec([1, 4], tf.float32)])
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [fn.get_concrete_function()])
  path = tmp_path / "tiny.tflite"
  path.write_bytes(converter.convert())
  return str(path)
