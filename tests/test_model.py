"""Loading frozen graphs and TF-Hub modules as feature extractors."""

import os

import numpy as np
import pytest
import tensorflow as tf

from retrain.config import ModelOptions
from retrain.errors import UserError
from retrain.features import model

tf1 = tf.compat.v1


def _features(fx, images):
  g = tf.Graph()
  with g.as_default():
    x = tf1.placeholder(tf.float32, [None, *fx.input_size, 3])
    out = model.build_bottleneck(fx, x)
    with tf1.Session(graph=g) as sess:
      return sess.run(out, {x: images})


def test_inception_graph_is_recognised_and_runs_on_batches(small_models):
  fx = model.load_feature_extractor(
      ModelOptions(graph=small_models["inception"]))
  assert fx.input_tensor == "Mul:0"
  assert fx.input_size == (299, 299)
  assert (fx.input_mean, fx.input_std) == (128.0, 128.0)
  assert fx.bottleneck_size == 2048
  # pool_3/_reshape fixes the batch at 1; the extractor sees through it.
  assert fx.bottleneck_tensor == "pool_3:0"
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, size=(3, 299, 299, 3)).astype(np.float32)
  batched = _features(fx, images)
  assert batched.shape == (3, 2048)
  one_by_one = np.concatenate([_features(fx, images[i:i + 1])
                               for i in range(3)])
  np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)


def test_inception_jpeg_input_name_is_accepted(small_models):
  fx = model.load_feature_extractor(ModelOptions(
      graph=small_models["inception"], input_tensor="DecodeJpeg/contents:0"))
  assert fx.input_tensor == "Mul:0"


def test_explicit_tensor_flags_override(small_models):
  fx = model.load_feature_extractor(ModelOptions(
      graph=small_models["inception"], input_tensor="Mul",
      bottleneck_tensor="pool_3:0", input_mean=0.0, input_std=1.0))
  assert fx.bottleneck_size == 2048 and fx.input_std == 1.0


def test_model_tag_depends_on_model_and_scaling(small_models):
  a = model.load_feature_extractor(ModelOptions(
      graph=small_models["inception"]))
  b = model.load_feature_extractor(ModelOptions(
      graph=small_models["inception"], input_mean=127.5))
  c = model.load_feature_extractor(ModelOptions(
      tfhub_module=small_models["hub"]))
  assert len({a.tag, b.tag, c.tag}) == 3
  assert a.tag == model.load_feature_extractor(ModelOptions(
      graph=small_models["inception"])).tag


@pytest.mark.parametrize("name,size,depth", [
    ("hub", (64, 64), 32), ("hub_nosig", (64, 64), 32), ("tf1", (48, 48), 16),
])
def test_tfhub_modules(small_models, name, size, depth):
  fx = model.load_feature_extractor(ModelOptions(
      tfhub_module=small_models[name]))
  assert fx.kind == "tfhub"
  assert fx.input_size == size and fx.bottleneck_size == depth
  assert (fx.input_mean, fx.input_std) == (0.0, 255.0)
  out = _features(fx, np.full((2, *size, 3), 128, np.float32))
  assert out.shape == (2, depth) and np.all(np.isfinite(out))


def test_tfhub_features_match_the_module(small_models):
  import tensorflow_hub as hub
  fx = model.load_feature_extractor(ModelOptions(
      tfhub_module=small_models["hub"]))
  images = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype(
      np.float32)
  ours = _features(fx, images)
  expected = hub.load(small_models["hub"])(images / 255.0).numpy()
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_dynamic_size_module_needs_input_size(small_models):
  with pytest.raises(UserError, match="--input_size"):
    model.load_feature_extractor(ModelOptions(
        tfhub_module=small_models["hub_dynamic"]))
  fx = model.load_feature_extractor(ModelOptions(
      tfhub_module=small_models["hub_dynamic"], input_size=(40, 56)))
  assert fx.input_size == (40, 56) and fx.bottleneck_size == 32


@pytest.mark.parametrize("options,message", [
    (dict(graph="/nonexistent/g.pb"), "no such file"),
    (dict(graph="NOT_A_GRAPH"), "not a TensorFlow GraphDef"),
    (dict(graph="INCEPTION", input_tensor="nope:0"),
     r"--input_tensor=nope:0 is not in .*candidates: .*Mul:0"),
    (dict(graph="INCEPTION", bottleneck_tensor="pool_9:0"),
     r"--bottleneck_tensor=pool_9:0 is not in .*candidates: .*pool_3"),
    (dict(graph="INCEPTION", bottleneck_tensor="Mul:0"),
     "not a vector after squeezing"),
    (dict(graph="UNKNOWN"), "pass --input_tensor"),
    (dict(tfhub_module="/nonexistent/module"), "no such folder"),
    (dict(tfhub_module="EMPTY_DIR"), "not a SavedModel"),
    (dict(tfhub_module="NOT_IMAGE"), "not an image feature vector module"),
    (dict(tfhub_module="HUB", input_size=(32, 32)), "does not match"),
    (dict(tfhub_module="http://localhost:9/no/module"),
     "could not download it.*--tfhub_module=/path/to"),
])
def test_model_errors(small_models, tmp_path, options, message):
  bad = tmp_path / "bad.pb"
  bad.write_bytes(b"\x00\x01garbage" * 10)
  unknown = tmp_path / "unknown.pb"
  g = tf.Graph()
  with g.as_default():
    x = tf1.placeholder(tf.float32, [None, 8, 8, 3], name="x")
    tf.reduce_mean(x, [1, 2], name="feat")
  unknown.write_bytes(g.as_graph_def().SerializeToString())
  (tmp_path / "empty").mkdir()
  subst = {"NOT_A_GRAPH": str(bad), "INCEPTION": small_models["inception"],
           "UNKNOWN": str(unknown), "EMPTY_DIR": str(tmp_path / "empty"),
           "NOT_IMAGE": small_models["not_image"], "HUB": small_models["hub"]}
  options = {k: subst.get(v, v) if isinstance(v, str) else v
             for k, v in options.items()}
  if "graph" in options:
    options["tfhub_module"] = ""
  with pytest.raises(UserError, match=message):
    model.load_feature_extractor(ModelOptions(**options))


def test_unknown_graph_works_with_flags(tmp_path):
  g = tf.Graph()
  with g.as_default():
    x = tf1.placeholder(tf.float32, [None, 8, 8, 3], name="x")
    tf.reduce_mean(x, [1, 2], name="feat")
  path = tmp_path / "custom.pb"
  path.write_bytes(g.as_graph_def().SerializeToString())
  with pytest.raises(UserError, match="--input_mean"):
    model.load_feature_extractor(ModelOptions(
        graph=str(path), tfhub_module="", input_tensor="x",
        bottleneck_tensor="feat"))
  fx = model.load_feature_extractor(ModelOptions(
      graph=str(path), tfhub_module="", input_tensor="x",
      bottleneck_tensor="feat", input_mean=0, input_std=1))
  assert fx.input_size == (8, 8) and fx.bottleneck_size == 3


def test_frozen_tfhub_module_is_cached_for_later_runs(small_models, tmp_path,
                                                      monkeypatch):
  options = ModelOptions(tfhub_module=small_models["hub"])
  first = model.load_feature_extractor(options, str(tmp_path))
  folder = tmp_path / model.MODULE_CACHE
  assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".pb"]

  def no_freezing(*args):
    raise AssertionError("the module was loaded again")
  monkeypatch.setattr(model, "_freeze_module", no_freezing)
  second = model.load_feature_extractor(options, str(tmp_path))
  assert (second.tag, second.input_tensor, second.bottleneck_tensor,
          second.input_size, second.bottleneck_size) == (
              first.tag, first.input_tensor, first.bottleneck_tensor,
              first.input_size, first.bottleneck_size)
  images = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)).astype(
      np.float32)
  np.testing.assert_array_equal(_features(second, images),
                                _features(first, images))
  # A damaged cache entry is rebuilt, never trusted.
  monkeypatch.undo()
  for p in folder.iterdir():
    if p.suffix == ".pb":
      p.write_bytes(b"\x00garbage")
  third = model.load_feature_extractor(options, str(tmp_path))
  assert third.tag == first.tag
  np.testing.assert_array_equal(_features(third, images),
                                _features(first, images))


def test_cached_frozen_module_is_checked_for_unsafe_ops(small_models,
                                                        tmp_path):
  options = ModelOptions(tfhub_module=small_models["hub"])
  model.load_feature_extractor(options, str(tmp_path))
  pb = next(p for p in (tmp_path / model.MODULE_CACHE).iterdir()
            if p.suffix == ".pb")
  graph_def = tf.compat.v1.GraphDef()
  graph_def.ParseFromString(pb.read_bytes())
  with tf.Graph().as_default() as g:
    tf.compat.v1.import_graph_def(graph_def, name="")
    tf.io.read_file("/etc/hostname", name="sneaky")
  pb.write_bytes(g.as_graph_def().SerializeToString())
  with pytest.raises(UserError, match=r"\(ReadFile\); refusing"):
    model.load_feature_extractor(options, str(tmp_path))


def test_model_failing_on_batches_is_a_clear_error(tmp_path):
  from retrain.features.extract import BottleneckExtractor
  g = tf.Graph()
  with g.as_default():
    x = tf1.placeholder(tf.float32, [None, 8, 8, 3], name="x")
    check = tf.debugging.assert_less(tf.shape(x)[0], 2, message="batch of 1")
    with tf.control_dependencies([check]):
      tf.reduce_mean(x, [1, 2], name="feat")
  path = tmp_path / "batch_one.pb"
  path.write_bytes(g.as_graph_def().SerializeToString())
  fx = model.load_feature_extractor(ModelOptions(
      graph=str(path), tfhub_module="", input_tensor="x",
      bottleneck_tensor="feat", input_mean=0, input_std=1))
  assert fx.bottleneck_size == 3  # From the static shape; nothing was run.
  with BottleneckExtractor(fx) as extractor:
    assert extractor.bottlenecks(np.zeros((1, 8, 8, 3), np.float32)).shape == (
        1, 3)
    with pytest.raises(UserError, match=r"fails on a batch of images \(.*"
                       r"batch of 1.*\); check --input_tensor"):
      extractor.bottlenecks(np.zeros((2, 8, 8, 3), np.float32))


def test_batch_tuner_picks_the_fastest_size_and_stops_when_slower():
  from retrain.features.extract import BatchTuner
  speed = {8: 100.0, 16: 130.0, 32: 90.0, 64: 200.0}  # images/s
  tuner = BatchTuner((8, 16, 32, 64))
  seen = []
  while not tuner.done:
    size = tuner.next_size()
    seen.append(size)
    first_of_shape = seen.count(size) == 1  # Pays one-off set-up: slower.
    tuner.record(size, size, size / speed[size] * (3 if first_of_shape
                                                   else 1))
  # 32 is clearly slower than 16: 64 is never tried.
  assert seen == [8, 8, 16, 16, 32, 32]
  assert tuner.best == 16 and tuner.next_size() == 16
  assert "16: 130/s" in tuner.describe()
  partial = BatchTuner((8, 16))
  partial.record(8, 5, 0.01)  # A last, partial batch is not a measurement.
  assert partial.rates == {} and partial.next_size() == 8


def test_automatic_batch_size_is_used_logged_and_changes_nothing(
    small_models, color_images, monkeypatch):
  """Unset --bottleneck_batch_size: sizes are timed on the first real
  batches, the choice is logged, and the vectors equal a batch-1 run."""
  from retrain.features import extract
  from retrain.features.extract import BottleneckExtractor
  fx = model.load_feature_extractor(
      ModelOptions(graph=small_models["inception"], tfhub_module=""))
  paths = sorted(os.path.join(root, f) for root, _, files in
                 os.walk(color_images) for f in files) * 3  # 216 images.
  extract._CHOSEN_BATCH.pop(fx.tag, None)
  logged = []
  monkeypatch.setattr(extract.logging, "info",
                      lambda fmt, *args: logged.append(fmt % args))
  with BottleneckExtractor(fx) as auto:
    assert auto.batch_size == 8
    got = dict((i, v) for i, v, _ in auto.compute(paths))
    chosen = auto.batch_size
  assert chosen in extract.AUTO_BATCH_SIZES
  assert extract._CHOSEN_BATCH[fx.tag] == chosen
  assert [m for m in logged if m.startswith(
      f"Bottleneck batch size {chosen}, chosen by timing")]
  with BottleneckExtractor(fx) as again:  # Chosen once per model.
    assert again.batch_size == chosen and again._tuner is None
  with BottleneckExtractor(fx, batch_size=1) as single:
    want = dict((i, v) for i, v, _ in single.compute(paths[:72]))
  assert len(got) == len(paths)
  for i, v in want.items():
    np.testing.assert_allclose(got[i], v, atol=1e-5)
  extract._CHOSEN_BATCH.pop(fx.tag, None)


def test_batch_sizes_whose_activations_are_too_large_are_not_tried(
    monkeypatch):
  from retrain.features import extract
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [None, 100, 100, 3])
    big = tf.tile(x, [1, 1, 1, 8])  # 100 x 100 x 24 floats: 960 000 bytes.
    tf.reduce_mean(big, [1, 2])
    tf.constant(np.zeros([500, 500], np.float32))  # Weights do not count.
  assert extract.largest_activation_bytes(graph) == 100 * 100 * 24 * 4
  fx = model.FeatureExtractor(graph.as_graph_def(), x.name, "Mean:0",
                              (100, 100), 0.0, 1.0, 24, "tag-x", "test",
                              "graph")
  monkeypatch.setattr(extract, "ACTIVATION_BUDGET_BYTES", 20 * 960_000)
  with extract.BottleneckExtractor(fx) as extractor:
    assert extractor._tuner.sizes == [8, 16]
