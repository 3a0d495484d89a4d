"""End to end on the real MobileNet models and flower photos in ../shared."""

import os

import numpy as np
import pytest

from retrain import pipeline
from retrain.config import HParams, ModelOptions
from tests import helpers

MODEL = "mobilenet_v1_025_128"


@pytest.fixture(scope="module", params=["frozen_graph", "saved_model"])
def flower_run(request, shared, tmp_path_factory):
  """A default run (4000 steps) on the dev flowers with each model format."""
  tmp = tmp_path_factory.mktemp("flowers_" + request.param)
  model_dir = os.path.join(shared, "models", MODEL)
  if request.param == "frozen_graph":
    options = ModelOptions(graph=os.path.join(model_dir, "frozen_graph.pb"),
                           tfhub_module="")
  else:
    options = ModelOptions(tfhub_module=os.path.join(model_dir,
                                                     "saved_model"))
  config = helpers.run_config(
      tmp, os.path.join(shared, "datasets", "flower_photos_dev"))
  result = pipeline.run(config, HParams(), options)
  return request.param, config, result, tmp


def test_default_run_reaches_75_percent(flower_run):
  kind, config, result, _ = flower_run
  assert result.labels == ["daisy", "dandelion", "roses", "sunflowers",
                           "tulips"]
  assert sum(result.set_sizes.values()) == 500 and not result.skipped
  assert result.history[-1].step == 4000
  assert result.test_accuracy >= 0.75, result.test_accuracy
  for path in result.outputs:
    assert os.path.exists(path), path


def test_exports_match_trained_session(flower_run):
  kind, config, result, tmp = flower_run
  graph = helpers.export_probabilities("graph", config.output_graph,
                                       result.test_paths, tmp)
  np.testing.assert_allclose(graph["bytes"], result.test_probabilities,
                             atol=1e-5)
  np.testing.assert_allclose(graph["float"], result.test_probabilities,
                             atol=1e-5)
  saved = helpers.export_probabilities("saved_model", config.saved_model_dir,
                                       result.test_paths, tmp)
  np.testing.assert_allclose(saved["bytes"], result.test_probabilities,
                             atol=1e-5)


def test_frozen_graph_and_saved_model_give_the_same_bottlenecks(shared,
                                                                tmp_path):
  """Both formats of one model agree, as the shared README measured (2e-5)."""
  from retrain import model
  from retrain.extract import BottleneckExtractor
  model_dir = os.path.join(shared, "models", MODEL)
  photos = os.path.join(shared, "models", "test_images")
  paths = sorted(os.path.join(photos, p) for p in os.listdir(photos)
                 if p.endswith((".jpg", ".png")))
  out = []
  for options in (ModelOptions(graph=os.path.join(model_dir,
                                                  "frozen_graph.pb"),
                               tfhub_module=""),
                  ModelOptions(tfhub_module=os.path.join(model_dir,
                                                         "saved_model"))):
    with BottleneckExtractor(model.load_feature_extractor(options)) as ex:
      got = sorted(ex.compute(paths), key=lambda r: r[0])
    assert all(err is None for _, _, err in got)
    out.append(np.stack([v for _, v, _ in got]))
  assert out[0].shape == (len(paths), 256)
  np.testing.assert_allclose(out[0], out[1], atol=1e-4)
