"""Several pretrained models, one classifier (issue 35), end to end on the
real MobileNets and flower photos of ../shared: the 0.25/224 frozen graph
(the larger input: the classifier takes its input) and the 0.25/128
SavedModel, mixed."""

import json
import os

import numpy as np
import pytest

from retrain import pipeline
from retrain.config import HParams, ModelOptions
from retrain.features import combined
from retrain.features.model import load_feature_extractor
from tests import helpers
from tests.test_shared_models import _assert_exports_match, _test_images


def _models(shared):
  models = os.path.join(shared, "models")
  return (ModelOptions(graph=os.path.join(models, "mobilenet_v1_025_224",
                                          "frozen_graph.pb"),
                       tfhub_module=""),
          ModelOptions(tfhub_module=os.path.join(
              models, "mobilenet_v1_025_128", "saved_model")))


@pytest.fixture(scope="module")
def pair_run(shared, tmp_path_factory):
  """The 0.25/224 model's bottlenecks cached alone first; then a run on
  both, with every export."""
  tmp = tmp_path_factory.mktemp("pair")
  flowers = os.path.join(shared, "datasets", "flower_photos_dev")
  config = helpers.run_config(
      tmp, flowers, audit=True,
      tflite_output=str(tmp / "out" / "model.tflite"),
      onnx_output=str(tmp / "out" / "model.onnx"),
      tfjs_output=str(tmp / "out" / "tfjs"))
  first = _models(shared)[0]
  alone = pipeline.cache_bottlenecks(config, HParams(), first)
  result = pipeline.run(config, HParams(), _models(shared))
  return config, result, tmp, alone


def test_adding_a_model_computes_that_models_bottlenecks_only(pair_run):
  config, result, _, alone = pair_run
  assert alone.filled.computed == 500
  assert result.bottlenecks_from_cache == 500  # The 0.25/224 model's.
  assert result.bottlenecks_computed == 500  # The 0.25/128 model's, only.
  assert sum(result.set_sizes.values()) == 500


def test_one_classifier_on_both_models(pair_run):
  """One layer on 256 + 256 features; the report scores each model alone
  and the pair the same way, with time and size; the pair at least as
  good as the better one alone (measured 85.9% vs 84.3%, 5-fold)."""
  config, result, _, _ = pair_run
  assert result.final_weights.shape == (512, 5)
  assert result.model["kind"] == "combined"
  assert [m["bottleneck_size"] for m in result.model["models"]] == [256, 256]
  assert result.test_accuracy >= 0.75, result.test_accuracy
  with open(os.path.join(os.path.dirname(config.output_graph),
                         "report.json")) as f:
    report = json.load(f)
  models = report["models"]
  assert len(models) == 3 and " + " in models[2]["model"]
  assert [m["bottleneck_size"] for m in models] == [256, 256, 512]
  for m in models:
    assert 0.6 < m["accuracy"] <= 1 and m["milliseconds"] > 0
    assert 1 < m["megabytes"] < 5
  assert models[2]["accuracy"] >= max(m["accuracy"] for m in models[:2])
  assert "models" in report["phases"]
  with open(os.path.join(os.path.dirname(config.output_graph),
                         "report.html")) as f:
    html = f.read()
  assert all(m["model"] in html for m in models)


def test_the_combined_graph_gives_the_joined_cached_vectors(pair_run, shared,
                                                            tmp_path):
  """The combined graph on photos decoded at its input equals the cached
  vectors joined (each model's normalised), which is what training saw."""
  from retrain.features.extract import BottleneckExtractor
  config, result, _, _ = pair_run
  fx = load_feature_extractor(_models(shared), config.bottleneck_dir)
  assert fx.input_size == (224, 224) and fx.input_tensor == "input:0"
  assert [p.input_size for p in fx.parts] == [(224, 224), (224, 224)]
  data = pipeline.compute_bottlenecks(
      pipeline.load_inputs(config, _models(shared)), config, 0)
  assert data.filled.computed == 0  # A warm run computes nothing.
  test = data.sets["testing"]
  with BottleneckExtractor(fx) as extractor:
    got = sorted(extractor.compute(test.paths[:10]), key=lambda r: r[0])
  vectors = np.stack([v for _, v, _ in got])
  np.testing.assert_allclose(vectors, test.take(np.arange(10)), atol=1e-4)
  # Each model's part has norm sqrt(256).
  np.testing.assert_allclose(np.linalg.norm(vectors[:, :256], axis=1), 16,
                             rtol=1e-5)


def test_exports_of_the_pair_match_the_trained_session(pair_run):
  config, result, tmp, _ = pair_run
  _assert_exports_match(config, result, tmp)
  lite = helpers.export_probabilities("tflite", config.tflite_output,
                                      result.test_paths, tmp)["float"]
  np.testing.assert_allclose(lite, result.test_probabilities, atol=1e-4)
  onnx = helpers.export_probabilities("onnx", config.onnx_output,
                                      result.test_paths, tmp)
  graph = helpers.export_probabilities("graph", config.output_graph,
                                       result.test_paths, tmp)
  np.testing.assert_allclose(onnx["float"], graph["float"], atol=1e-5)
  assert list(onnx["labels"]) == result.labels


def test_classic_client_feeds_the_larger_models_input(pair_run, shared):
  """The frozen export keeps input:0 of the model the pair takes its input
  from (0.25/224: (x - 127.5) / 127.5), as the classic clients feed it."""
  from retrain.deploy.classifiers import load_classifier
  config, result, tmp, _ = pair_run
  with open(os.path.splitext(config.output_graph)[0] + ".json") as f:
    model_input = json.load(f)["inputs"]["model_input"]
  assert (model_input["name"], model_input["mean"], model_input["std"],
          model_input["shape"]) == ("input:0", 127.5, 127.5,
                                    [None, 224, 224, 3])
  photos = _test_images(shared)
  _, ours, _ = load_classifier(config.output_graph).classify(photos)
  classic = helpers.export_probabilities("classic", config.output_graph,
                                         photos, tmp)
  np.testing.assert_allclose(classic["same"], ours, atol=1e-3)


def test_label_image_on_the_pairs_exports(pair_run):
  """label_image on the frozen graph and the .tflite: the trained
  session's top-1 on the test photos."""
  from retrain.deploy.classifiers import load_classifier
  config, result, _, _ = pair_run
  for path in (config.output_graph, config.tflite_output):
    _, probabilities, skipped = load_classifier(path).classify(
        result.test_paths)
    assert not skipped
    agree = np.mean(probabilities.argmax(1) ==
                    result.test_probabilities.argmax(1))
    assert agree >= 0.98, (path, agree)


def test_the_same_model_twice_is_refused(shared):
  from retrain.errors import UserError
  with pytest.raises(UserError, match="given twice"):
    load_feature_extractor([_models(shared)[0], _models(shared)[0]])


def test_normalize_matches_the_graph():
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 3, (4, 7)).astype(np.float32)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  graph = tf.Graph()
  with graph.as_default():
    out = combined._normalize_graph(tf.constant(x), 7)  # pylint: disable=protected-access
    with tf.compat.v1.Session() as session:
      np.testing.assert_allclose(session.run(out), combined.normalize(x),
                                 rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(combined.normalize(x), axis=1),
                             np.sqrt(7), rtol=1e-6)


def test_mediapipe_classifies_the_pairs_tflite(pair_run, tmp_path):
  """MediaPipe Tasks' ImageClassifier on the pair's .tflite (metadata
  inside, no other file) equals label_image on it, on 20 test photos
  already at the input size (PNG: the same pixels for both)."""
  helpers.require("mediapipe")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from retrain.deploy.classifiers import load_classifier
  from retrain.features.extract import ImageDecoder
  config, result, _, _ = pair_run
  decoder = ImageDecoder((224, 224))
  paths = []
  try:
    for i, photo in enumerate(result.test_paths[:20]):
      pixels = np.clip(np.round(decoder.decode(photo)[0]), 0, 255)
      paths.append(str(tmp_path / f"{i:02d}.png"))
      Image.fromarray(pixels.astype(np.uint8)).save(paths[-1])
  finally:
    decoder.close()
  _, ours, _ = load_classifier(config.tflite_output).classify(paths)
  theirs, _ = helpers.mediapipe_probabilities(config.tflite_output, paths,
                                              result.labels)
  np.testing.assert_array_equal(theirs.argmax(1), ours.argmax(1))
  np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_advice_when_one_model_alone_is_as_good():
  from retrain.training import per_model
  def score(name, accuracy, entropy, ms):
    return per_model.ModelScore(name, 8, accuracy, entropy, "cv", ms, 1.0)
  alone = [score("a", 0.90, 0.30, 5.0), score("b", 0.80, 0.50, 3.0)]
  said = per_model.advice(alone + [score("a + b", 0.89, 0.31, 8.0)])
  assert said.startswith("a alone scores as well as all 2 models") and (
      "5.0 instead of 8.0 ms/photo" in said)
  assert per_model.advice(alone + [score("a + b", 0.91, 0.28, 8.0)]) == ""
  assert per_model.advice(alone + [score("a + b", 0.89, 0.28, 8.0)]) == ""


def test_augmented_copies_are_made_per_model_and_joined(small_models,
                                                        color_images,
                                                        tmp_path):
  """--flip_left_right with several models: each model caches its own
  copies; the joined training set holds every original and copy once,
  each row the models' vectors of the same (flipped) photo."""
  options = (ModelOptions(graph=small_models["inception"], tfhub_module=""),
             ModelOptions(tfhub_module=small_models["hub"]))
  config = helpers.run_config(tmp_path, color_images, flip_left_right=True,
                              augmentation_copies=2)
  data = pipeline.cache_bottlenecks(config, HParams(), options)
  fx = load_feature_extractor(options, config.bottleneck_dir)
  train = data.sets["training"]
  originals = [p for p in train.paths if "#augmented" not in p]
  assert len(train) == 3 * len(originals) and originals
  assert data.augmented_computed == 2 * 2 * len(originals)
  alone = [pipeline.cache_bottlenecks(config, HParams(), o).sets["training"]
           for o in options]
  assert all(a.paths == train.paths for a in alone)
  x = train.take(np.arange(len(train)))
  left = combined.normalize(alone[0].take(np.arange(len(train))))
  np.testing.assert_allclose(x[:, :left.shape[1]], left, rtol=1e-5,
                             atol=1e-6)
  assert x.shape[1] == fx.bottleneck_size
