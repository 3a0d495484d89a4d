"""Paths on TensorFlow filesystems (ram:// here; gs://, s3:// the same way)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from cache import fs
from retrain import pipeline
from retrain.config import HParams, ModelOptions
from retrain.errors import UserError
from retrain.features import storage
from tests import helpers

gfile = tf.io.gfile


def _copy_tree(local, remote):
  for root, _, files in os.walk(local):
    for name in files:
      rel = os.path.relpath(os.path.join(root, name), local)
      dest = remote + "/" + rel.replace(os.sep, "/")
      gfile.makedirs(dest.rsplit("/", 1)[0])
      gfile.copy(os.path.join(root, name), dest, overwrite=True)


def test_a_whole_run_on_ram_paths_matches_a_local_run(small_models,
                                                      color_images, tmp_path):
  """Images, cache, every output and summaries on ram://: the same model
  as the local run, a warm rerun computes nothing, nothing written locally
  but the local run's files."""
  remote = "ram://retrain_test_run"
  _copy_tree(color_images, remote + "/photos")
  options = ModelOptions(graph=small_models["inception"], tfhub_module="")
  hparams = HParams(how_many_training_steps=50)
  local = pipeline.run(helpers.run_config(tmp_path / "local", color_images),
                       hparams, options)
  out = remote + "/out"
  config = helpers.run_config(
      tmp_path, remote + "/photos", bottleneck_dir=remote + "/cache",
      output_graph=out + "/graph.pb", output_labels=out + "/labels.txt",
      saved_model_dir=out + "/saved_model", summaries_dir=remote + "/tb",
      tflite_output=out + "/model.tflite", checkpoint_path=remote + "/ckpt/m",
      intermediate_output_graphs_dir=remote + "/intermediate")
  before = helpers.files_under(str(tmp_path))
  result = pipeline.run(config, hparams, options)
  assert helpers.files_under(str(tmp_path)) == before
  assert result.bottlenecks_computed == local.bottlenecks_computed > 0
  assert result.labels == local.labels
  np.testing.assert_allclose(result.test_probabilities,
                             local.test_probabilities, atol=1e-6)
  for name in ("graph.pb", "graph.json", "labels.txt", "model.tflite",
               "report.json", "report.html", "saved_model/saved_model.pb",
               "saved_model/labels.txt"):
    assert gfile.exists(f"{out}/{name}"), name
  meta = json.loads(fs.read_bytes(out + "/graph.json"))
  assert meta["labels"] == "labels.txt"
  assert gfile.listdir(remote + "/tb")
  # The exported graph classifies as the session did.
  graph_def = tf.compat.v1.GraphDef.FromString(fs.read_bytes(
      out + "/graph.pb"))
  with tf.Graph().as_default() as g:
    tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=g) as sess:
      path = result.test_paths[0]
      probs = sess.run("final_result:0", {"DecodeJpeg/contents:0":
                                          fs.read_bytes(path)})
  np.testing.assert_allclose(probs[0], result.test_probabilities[0],
                             atol=1e-5)
  again = pipeline.run(config, hparams, options)
  assert again.bottlenecks_computed == 0


def test_ram_cache_with_beam_in_memory(small_models, color_images, tmp_path):
  helpers.require("apache_beam")
  remote = "ram://retrain_test_beam"
  _copy_tree(color_images, remote + "/photos")
  options = ModelOptions(graph=small_models["inception"], tfhub_module="")
  config = helpers.run_config(tmp_path, remote + "/photos",
                              bottleneck_dir=remote + "/cache",
                              beam_runner="DirectRunner")
  data = pipeline.cache_bottlenecks(config, HParams(), options)
  local = pipeline.cache_bottlenecks(
      helpers.run_config(tmp_path / "l", color_images), HParams(), options)
  assert data.filled.computed == local.filled.computed > 0
  for cat, s in data.sets.items():
    np.testing.assert_allclose(s.in_memory().x, local.sets[cat].in_memory().x,
                               atol=1e-6)


@pytest.mark.parametrize("error, words", [
    (tf.errors.FailedPreconditionError(None, None, "Error executing an HTTP "
                                       "request: libcurl code 6 meaning "
                                       "'Couldn't resolve host name'"),
     "cannot reach the gs:// service"),
    (tf.errors.NotFoundError(None, None, "Could not find directory "
                             "gs://b/photos"), "bucket exists"),
    (tf.errors.PermissionDeniedError(None, None, "403 Forbidden"),
     "credentials"),
])
def test_storage_errors_are_one_line_that_names_the_path(error, words):
  line = storage.explain("gs://b/photos", error)
  assert line.startswith("gs://b/photos: ") and words in line
  assert "\n" not in line


def test_an_unreachable_bucket_is_one_line_naming_the_flag(tmp_path):
  proc = helpers.run_cli([f"--image_dir={tmp_path}",
                          "--output_graph=gs://retrain-no-such-bucket/g.pb"],
                         timeout=300)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert "gs://retrain-no-such-bucket" in lines[0]
  assert "Traceback" not in proc.stderr


def test_an_unreachable_image_folder_says_what_to_check(tmp_path):
  proc = helpers.run_cli(["--image_dir=gs://retrain-no-such-bucket/photos",
                          f"--bottleneck_dir={tmp_path / 'b'}",
                          f"--output_graph={tmp_path / 'g.pb'}",
                          f"--output_labels={tmp_path / 'l.txt'}"],
                         timeout=300)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "gs://retrain-no-such-bucket/photos" in lines[0]
  assert "credentials" in lines[0] and "reach" in lines[0]


def test_unknown_scheme_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="nosuch://x"):
    pipeline.run(helpers.run_config(tmp_path, "nosuch://x/photos"),
                 HParams(), ModelOptions(graph="x.pb", tfhub_module=""))
