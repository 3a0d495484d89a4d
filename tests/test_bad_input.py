"""Messy photo folders, huge and broken images, and untrusted graphs."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import cache
from retrain import pipeline
from retrain.config import HParams, ModelOptions
from retrain.data import imageinfo, preprocess
from retrain.errors import UserError
from retrain.features import model, safety
from tests import helpers, messy

tf1 = tf.compat.v1


def _encoded(fmt, size=(37, 53), mode="RGB", **kw):
  image = Image.new(mode, (size[1], size[0]))
  buf = io.BytesIO()
  image.save(buf, fmt, **kw)
  return buf.getvalue()


@pytest.mark.parametrize("fmt,name,kw", [
    ("JPEG", "jpeg", {}), ("JPEG", "jpeg", {"progressive": True}),
    ("PNG", "png", {}), ("GIF", "gif", {}), ("BMP", "bmp", {}),
    ("WEBP", "webp", {}), ("WEBP", "webp", {"lossless": True}),
])
def test_sniff_reads_format_and_size(fmt, name, kw):
  info = imageinfo.sniff(_encoded(fmt, **kw))
  assert info == imageinfo.ImageInfo(name, 53, 37)


def test_sniff_unknown_and_short():
  assert imageinfo.sniff(b"") is None
  assert imageinfo.sniff(b"hello world, not an image") is None
  assert imageinfo.sniff(b"\x89PNG\r\n\x1a\n") is None


def test_oversized_images_are_refused_before_decoding():
  reason = imageinfo.check_decodable(messy.fake_png_header(100000, 100000),
                                     224, 224)
  assert reason.startswith("too large to decode safely: PNG 100000x100000")
  assert imageinfo.check_decodable(messy.fake_png_header(4000, 3000),
                                   224, 224) is None
  assert imageinfo.check_decodable(b"", 224, 224) == "empty file"


@pytest.mark.parametrize("h,w,target,keep,ratio", [
    # "fast" (keep >= 1x the input size)
    (255, 400, 128, 1, 1), (300, 400, 128, 1, 2), (600, 800, 128, 1, 4),
    (1100, 1100, 128, 1, 8), (4000, 3000, 299, 1, 8),
    (12000, 12000, 224, 1, 8), (255, 5000, 128, 1, 1), (256, 5000, 128, 1, 2),
    # keep >= 2x the input size
    (300, 400, 128, 2, 1), (600, 800, 128, 2, 2), (1100, 1100, 128, 2, 4),
    (4000, 3000, 128, 2, 8), (4000, 3000, 299, 2, 4), (511, 5000, 128, 2, 1),
    (512, 5000, 128, 2, 2),
    # "exact": never scaled
    (4000, 3000, 128, 0, 1),
])
def test_jpeg_decode_scale_matches_the_graph(h, w, target, keep, ratio):
  assert imageinfo.jpeg_scale_ratio(h, w, target, target, keep) == ratio
  data = _encoded("JPEG", size=(h, w))
  rule = preprocess.Preprocessing(jpeg_dct_keep=keep)
  g = tf.Graph()
  with g.as_default():
    decoded = preprocess.decode_image(tf.constant(data), (target, target),
                                      rule)
    with tf1.Session(graph=g) as sess:
      shape = sess.run(decoded).shape
  assert shape == (-(-h // ratio), -(-w // ratio), 3)


@pytest.mark.parametrize("h,w,antialiased", [
    (100, 100, False), (128, 250, False), (128, 260, True), (600, 300, True),
    (64, 64, False)])
def test_resize_antialiases_only_when_shrinking_more_than_2x(h, w,
                                                             antialiased):
  image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3)).astype(
      np.float32)
  fast = preprocess.resize_image(image, (128, 128)).numpy()
  exact = preprocess.resize_image(
      image, (128, 128), preprocess.PREPROCESSINGS["exact"]).numpy()
  plain = tf.clip_by_value(tf.image.resize(image, (128, 128), "bilinear"),
                           0, 255).numpy()
  np.testing.assert_allclose(fast, exact if antialiased else plain, atol=1e-3)
  if h < 128 and w < 128:  # Enlarging: antialiasing changes nothing.
    np.testing.assert_allclose(exact, plain, atol=1e-3)
  elif antialiased:
    assert np.abs(fast - plain).max() > 1


def test_unsafe_op_list_covers_the_dangerous_kinds():
  for op in ("ReadFile", "WriteFile", "PyFunc", "EagerPyFunc", "SaveV2",
             "RestoreV2", "Save", "Restore", "MatchingFiles",
             "WholeFileReaderV2", "TFRecordDataset", "PrintV2"):
    assert op in safety.UNSAFE_OPS
  # Ops that models and our exports legitimately use are not in it.
  for op in ("Conv2D", "DecodeImage", "DecodeJpeg", "MatMul", "Softmax",
             "Placeholder", "Const", "StatelessWhile", "While"):
    assert op not in safety.UNSAFE_OPS


def _graph_with_read_file(path):
  g = tf.Graph()
  with g.as_default():
    x = tf1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
    secret = tf.io.read_file("/etc/hostname")
    leak = tf.cast(tf.strings.length(secret), tf.float32)
    tf.add(tf.reduce_mean(x, [1, 2]), leak, name="features")
  path.write_bytes(g.as_graph_def().SerializeToString())
  return str(path)


def test_graph_with_file_ops_is_refused_unless_allowed(tmp_path):
  path = _graph_with_read_file(tmp_path / "evil.pb")
  options = ModelOptions(graph=path, tfhub_module="", input_tensor="input",
                         bottleneck_tensor="features", input_mean=0,
                         input_std=1)
  with pytest.raises(UserError, match=r"\(ReadFile\); refusing.*"
                     r"--allow_unsafe_graph_ops"):
    model.load_feature_extractor(options)
  fx = model.load_feature_extractor(options._replace(
      allow_unsafe_graph_ops=True))
  assert fx.bottleneck_size == 3


def test_unsafe_ops_inside_functions_are_found():
  @tf.function
  def f(x):
    return x + tf.cast(tf.strings.length(tf.io.read_file("/etc/hostname")),
                       tf.float32)
  g = tf.Graph()
  with g.as_default():
    x = tf1.placeholder(tf.float32, [], name="x")
    f(x)
  graph_def = g.as_graph_def()
  assert "ReadFile" not in {n.op for n in graph_def.node}
  assert safety.find_unsafe_ops(graph_def) == ["ReadFile"]


@pytest.fixture(scope="module")
def messy_run(shared, tmp_path_factory):
  """A run over a messy folder made of real flower photos."""
  tmp = tmp_path_factory.mktemp("messy")
  flowers = os.path.join(shared, "datasets", "flower_photos_dev")
  photos = sorted(os.path.join(flowers, c, n) for c in sorted(os.listdir(
      flowers)) if os.path.isdir(os.path.join(flowers, c))
                  for n in sorted(os.listdir(os.path.join(flowers, c))))
  root = str(tmp / "photos")
  good, bad = messy.make_messy_folder(root, photos[::20])
  config = helpers.run_config(tmp, root, saved_model_dir="")
  options = ModelOptions(graph=os.path.join(
      shared, "models", "mobilenet_v1_025_128", "frozen_graph.pb"),
                         tfhub_module="")
  result = pipeline.run(config, HParams(how_many_training_steps=50),
                        options)
  return root, good, bad, config, result


def test_messy_folder_uses_every_decodable_image(messy_run):
  root, good, bad, config, result = messy_run
  assert result.labels == ["broken", "lonely", "mixed", "names"]
  assert sum(result.set_sizes.values()) == len(good)
  skipped = {os.path.relpath(p, root): r for p, r in result.skipped}
  assert set(skipped) == set(bad)
  for rel, reason in bad.items():
    assert reason in skipped[rel], (rel, skipped[rel])


def test_skipped_images_are_listed_beside_the_outputs(messy_run):
  root, good, bad, config, result = messy_run
  listed = os.path.splitext(config.output_graph)[0] + ".skipped.txt"
  with open(listed, encoding="utf-8") as f:
    rows = [line.rstrip("\n").split("\t") for line in f]
  assert sorted(os.path.relpath(p, root) for p, _ in rows) == sorted(bad)


def test_only_usable_images_get_cache_files(messy_run):
  root, good, bad, config, result = messy_run
  files = {f for f in helpers.files_under(config.bottleneck_dir)
           if f.endswith(cache.naming.SUFFIX)}
  stems = {f.rsplit(".", 2)[0] for f in files}
  assert stems == set(good)
  for f in files:
    with open(os.path.join(config.bottleneck_dir, f), "rb") as fh:
      assert cache.verify(fh.read()) == 256


def test_odd_class_folder_names_stay_inside_the_cache(small_models,
                                                      tmp_path):
  root = tmp_path / "photos"
  names = ["___", "a..b", " spaced ", "-rf", "ünï", "...hidden"]
  fixtures_colors = {n: (40 * i, 200 - 30 * i, 90) for i, n in
                     enumerate(names)}
  from tests import fixtures
  fixtures.make_color_images(str(root), per_class=3,
                             colors=fixtures_colors)
  config = helpers.run_config(tmp_path / "run", str(root),
                              saved_model_dir="", summaries_dir="",
                              checkpoint_path="", testing_percentage=0,
                              validation_percentage=0)
  # "___" gives an empty label: refused with a clear message. "...hidden"
  # starts with a dot: ignored like every hidden folder.
  with pytest.raises(UserError, match="empty label"):
    pipeline.run(config, HParams(how_many_training_steps=1), ModelOptions(
        graph=small_models["inception"], tfhub_module=""))
  os.rename(root / "___", root / "dots___")
  result = pipeline.run(config, HParams(how_many_training_steps=1),
                        ModelOptions(graph=small_models["inception"],
                                     tfhub_module=""))
  assert result.labels == ["a b", "dots", "rf", "spaced", "ünï"]
  bn = os.path.realpath(config.bottleneck_dir)
  sidecars = [rel for rel in helpers.files_under(bn)
              if os.sep in rel and not rel.startswith(
                  (model.MODULE_CACHE, "."))]
  for rel in sidecars:
    path = os.path.realpath(os.path.join(bn, rel))
    assert path.startswith(bn + os.sep)
    assert rel.split(os.sep)[0] in ["dots___", "a..b", " spaced ", "-rf",
                                    "ünï"]
  assert len(sidecars) == 15
  others = set(helpers.files_under(bn)) - set(sidecars)
  assert {f for f in others if not f.startswith(
      (model.MODULE_CACHE, "."))} == {
          result.model["tag"] + ".index"}
