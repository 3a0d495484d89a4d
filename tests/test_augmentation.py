"""Cached augmentation, reports, TensorBoard and progress of a real run."""

import glob
import json
import os
import pty
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import cache
from retrain import pipeline
from retrain.config import HParams, ModelOptions
from retrain.data import preprocess
from retrain.errors import UserError
from retrain.features import model
from tests import helpers

tf1 = tf.compat.v1
HP = HParams(how_many_training_steps=60, learning_rate=0.05,
             eval_step_interval=20)


def _distort(image, d, seed, size=(24, 32)):
  g = tf.Graph()
  with g.as_default():
    out = preprocess.distort_and_resize(tf.constant(image), size, d,
                                        tf.constant(seed, tf.int64))
    with tf1.Session(graph=g) as sess:
      return sess.run(out)


def test_distortions_are_seeded():
  image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)
  d = preprocess.Distortions(True, 10, 20, 30)
  a = _distort(image, d, [1, 2])
  np.testing.assert_array_equal(a, _distort(image, d, [1, 2]))
  assert not np.allclose(a, _distort(image, d, [1, 3]))
  assert a.shape == (24, 32, 3) and a.min() >= 0 and a.max() <= 255


def test_flip_only_mirrors_or_keeps():
  image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)
  plain = _distort(image, preprocess.Distortions(), [0, 0])
  seen = set()
  for k in range(8):
    out = _distort(image, preprocess.Distortions(flip_left_right=True),
                   [0, k])
    if np.allclose(out, plain):
      seen.add("kept")
    else:
      np.testing.assert_allclose(out, plain[:, ::-1], atol=1e-4)
      seen.add("mirrored")
  assert seen == {"kept", "mirrored"}


@pytest.fixture(scope="module")
def augmented_run(small_models, color_images, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("augmented")
  config = helpers.run_config(tmp, color_images, saved_model_dir="",
                              testing_percentage=25, flip_left_right=True,
                              random_crop=10, random_brightness=20,
                              augmentation_copies=2)
  options = ModelOptions(graph=small_models["inception"], tfhub_module="")
  return config, options, pipeline.run(config, HP, options)


def test_augmented_copies_are_cached_and_reused(augmented_run):
  config, options, result = augmented_run
  train_count = result.set_sizes["training"]
  originals = [p for p in result.test_paths]
  assert train_count > 0 and originals
  assert result.augmented_computed == 2 * train_count // 3
  # Again on the same cache, into another folder (the fixture's reports
  # are checked below).
  out = os.path.join(os.path.dirname(os.path.dirname(config.output_graph)),
                     "again")
  again = pipeline.run(config._replace(
      output_graph=os.path.join(out, "graph.pb"),
      output_labels=os.path.join(out, "labels.txt")), HP, options)
  assert again.augmented_computed == 0 and again.bottlenecks_computed == 0
  assert again.report["regularization"]["why"] == (
      "searched, kept from a run on the same data")
  np.testing.assert_array_equal(again.test_probabilities,
                                result.test_probabilities)


def test_copies_differ_from_each_other_and_from_the_original(augmented_run):
  config, _, result = augmented_run
  files = helpers.files_under(config.bottleneck_dir)
  copy1 = sorted(f for f in files if ".aug1-" in f)
  copy2 = sorted(f for f in files if ".aug2-" in f)
  originals = sorted(f for f in files if ".aug" not in f and os.sep in f and
                     not f.startswith((model.MODULE_CACHE, ".")))
  # One packed index per cache tag: the model's and each copy's.
  tag = result.model["tag"]
  digest = copy1[0].split(".aug1-")[1][:8]
  assert sorted(f for f in files if os.sep not in f) == [
      f"{tag}.aug1-{digest}.index", f"{tag}.aug2-{digest}.index",
      f"{tag}.index"]
  assert len(copy1) == len(copy2) > 0
  assert len(originals) == 72
  # <relpath>.<model tag>.bn and <relpath>.<model tag>.aug<k>-<digest>.bn
  first = copy1[0]
  names = (first.split(".aug1-")[0] + ".bn", first,
           first.replace(".aug1-", ".aug2-"))
  vectors = [cache.read_vector(os.path.join(config.bottleneck_dir, f))
             for f in names]
  assert not np.allclose(vectors[0], vectors[1])
  assert not np.allclose(vectors[1], vectors[2])
  # Validation and test images are never distorted.
  test_rel = {os.path.relpath(p, config.image_dir) for p in
              result.test_paths}
  assert not any(f.split(".aug")[0] in test_rel for f in copy1)


def test_distortion_flag_alone_uses_five_copies(small_models, color_images,
                                                tmp_path):
  config = helpers.run_config(tmp_path, color_images, saved_model_dir="",
                              flip_left_right=True)
  assert config.copies() == 5
  with pytest.raises(UserError, match="needs a distortion"):
    pipeline.run(config._replace(flip_left_right=False,
                                 augmentation_copies=3), HP,
                 ModelOptions(graph=small_models["inception"],
                              tfhub_module=""))


def test_reports_are_written_and_match_the_run(augmented_run):
  config, _, result = augmented_run
  folder = os.path.dirname(config.output_graph)
  with open(os.path.join(folder, "report.json")) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(result.report))
  assert written["accuracy"] == result.test_accuracy
  truth = result.test_truth
  predicted = result.test_probabilities.argmax(1)
  matrix = np.array(written["confusion_matrix"])
  assert matrix.sum() == len(truth)
  assert np.trace(matrix) == np.sum(truth == predicted)
  assert [c["support"] for c in written["per_class"]] == list(
      np.bincount(truth, minlength=3))
  with open(os.path.join(folder, "report.txt")) as f:
    assert f.read().startswith(
        f"Test accuracy: {result.test_accuracy * 100:.1f}%")


def test_tensorboard_has_scalars_histograms_and_confusion_image(
    augmented_run):
  config, _, _ = augmented_run
  tags = {}
  for event_file in glob.glob(os.path.join(config.summaries_dir, "run-*",
                                           "*", "events.*")):
    kind = os.path.basename(os.path.dirname(event_file))
    for event in tf1.train.summary_iterator(event_file):
      for value in event.summary.value:
        tags.setdefault(kind, set()).add(
            (value.tag, value.WhichOneof("value")))
  assert {("accuracy", "simple_value"), ("cross_entropy", "simple_value"),
          ("final_weights", "histo"),
          ("final_biases", "histo")} <= tags["train"]
  assert {("accuracy", "simple_value"),
          ("cross_entropy", "simple_value")} <= tags["validation"]
  assert ("test_confusion_matrix", "image") in tags["validation"]


def test_progress_bar_on_a_terminal(small_models, color_images, tmp_path):
  leader, follower = pty.openpty()
  env = dict(os.environ, PYTHONPATH=helpers.REPO)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  proc = subprocess.Popen(
      [sys.executable, "-m", "retrain", f"--image_dir={color_images}",
       f"--graph={small_models['inception']}",
       "--how_many_training_steps=50", f"--bottleneck_dir={tmp_path}/bn",
       f"--output_graph={tmp_path}/g.pb",
       f"--output_labels={tmp_path}/l.txt", "--summaries_dir=",
       "--checkpoint_path="],
      stderr=follower, stdout=subprocess.DEVNULL, cwd=helpers.REPO, env=env)
  os.close(follower)
  chunks = []
  while True:
    try:
      data = os.read(leader, 65536)
    except OSError:
      break
    if not data:
      break
    chunks.append(data)
  assert proc.wait() == 0
  out = b"".join(chunks).decode("utf-8", "replace")
  assert "\r" in out
  assert "Bottlenecks (0 cached, 72 new) [" in out
  assert re.search(r"Training \[#{24}\] 50/50, \d+/s", out), out[-2000:]
  assert "Step 10/50:" not in out  # The bar replaces per-step log lines.


def test_augmented_sets_past_the_memory_budget_stay_on_disk(
    augmented_run, monkeypatch):
  """The originals and every copy are read from their memory-mapped cache
  files where needed, never concatenated in memory; training is the same."""
  config, options, result = augmented_run
  seen = []
  real_train = pipeline.train.train

  def spy(tg, session, train_set, validation_set, *args, **kwargs):
    seen.append((train_set.rows is not None, type(train_set.x).__name__,
                 len(train_set.x.parts), validation_set.rows is not None))
    return real_train(tg, session, train_set, validation_set, *args,
                      **kwargs)

  monkeypatch.setattr(pipeline.train, "train", spy)
  again = pipeline.run(config._replace(max_in_memory_mb=0.001,
                                       tflite_output="", summaries_dir=""),
                       HP, options)
  assert seen == [(True, "StackedRows", 3, True)]
  assert again.augmented_computed == 0
  assert again.history == result.history
  np.testing.assert_allclose(again.final_weights, result.final_weights,
                             atol=1e-6)
