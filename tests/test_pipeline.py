"""End to end on generated images with small models built by the tests."""

import csv
import io
import json
import os

import numpy as np
import pytest

from retrain import pipeline
from retrain.config import HParams, ModelOptions
from retrain.errors import UserError
from retrain.features import model
from tests import helpers

FAST = HParams(how_many_training_steps=200, learning_rate=0.05,
               eval_step_interval=50)


def _options(small_models, kind):
  if kind == "graph":
    return ModelOptions(graph=small_models["inception"], tfhub_module="")
  return ModelOptions(tfhub_module=small_models["hub"])


@pytest.fixture(scope="module", params=["graph", "tfhub"])
def trained(request, small_models, color_images, tmp_path_factory):
  """One run per model kind: (kind, config, result, tmp)."""
  tmp = tmp_path_factory.mktemp("run_" + request.param)
  config = helpers.run_config(tmp, color_images, testing_percentage=25,
                              validation_percentage=15,
                              intermediate_store_frequency=100,
                              tflite_output=str(tmp / "out" / "model.tflite"))
  result = pipeline.run(config, FAST, _options(small_models, request.param))
  return request.param, config, result, tmp


def test_run_learns_and_writes_every_output(trained):
  kind, config, result, tmp = trained
  assert result.labels == ["blue", "green", "red"]
  assert result.test_accuracy is not None and result.test_accuracy >= 0.9
  assert len(result.test_paths) == result.set_sizes["testing"] > 0
  assert result.bottlenecks_computed == 72 and result.bottlenecks_from_cache == 0
  for path in (config.output_graph, config.output_labels,
               os.path.join(config.saved_model_dir, "saved_model.pb"),
               os.path.splitext(config.output_graph)[0] + ".json"):
    assert os.path.isfile(path), path
  with open(config.output_labels) as f:
    assert f.read() == "blue\ngreen\nred\n"
  assert sorted(os.listdir(config.intermediate_output_graphs_dir)) == [
      "intermediate_100.json", "intermediate_100.pb",
      "intermediate_200.json", "intermediate_200.pb"]
  assert os.path.isfile(config.checkpoint_path + ".index")
  runs = os.listdir(config.summaries_dir)
  assert len(runs) == 1 and sorted(os.listdir(
      os.path.join(config.summaries_dir, runs[0]))) == ["train", "validation"]
  # One sidecar per image, in folders mirroring the classes, and the
  # model's packed index; no temp files.
  cached = {p for p in helpers.files_under(config.bottleneck_dir)
            if not p.startswith((model.MODULE_CACHE + os.sep,
                                 "."))}
  assert len(cached) == 73
  assert [p for p in cached if os.sep not in p] == [
      result.model["tag"] + ".index"]
  assert all(p.split(os.sep)[0] in ("red", "green", "blue") and
             p.endswith(".bn") for p in cached if os.sep in p)


def test_frozen_graph_matches_trained_session_in_fresh_process(trained):
  kind, config, result, tmp = trained
  probs = helpers.export_probabilities("graph", config.output_graph,
                                       result.test_paths, tmp)
  np.testing.assert_allclose(probs["bytes"], result.test_probabilities,
                             atol=1e-5)
  np.testing.assert_allclose(probs["float"], result.test_probabilities,
                             atol=1e-5)


def test_saved_model_matches_trained_session_in_fresh_process(trained):
  kind, config, result, tmp = trained
  probs = helpers.export_probabilities("saved_model", config.saved_model_dir,
                                       result.test_paths, tmp)
  np.testing.assert_allclose(probs["bytes"], result.test_probabilities,
                             atol=1e-5)
  expected = [result.labels[i] for i in result.test_probabilities.argmax(1)]
  assert list(probs["label"]) == expected


def test_tflite_matches_trained_session_in_fresh_process(trained):
  kind, config, result, tmp = trained
  probs = helpers.export_probabilities("tflite", config.tflite_output,
                                       result.test_paths, tmp)
  np.testing.assert_allclose(probs["float"], result.test_probabilities,
                             atol=1e-4)
  stem = os.path.splitext(config.tflite_output)[0]
  with open(stem + ".labels.txt") as f:
    assert f.read() == "blue\ngreen\nred\n"


def test_every_export_has_its_json(trained):
  kind, config, result, tmp = trained
  stem = os.path.splitext(config.tflite_output)[0]
  for path, export in (
      (os.path.splitext(config.output_graph)[0] + ".json", "frozen_graph"),
      (os.path.join(config.saved_model_dir, "retrain.json"), "saved_model"),
      (stem + ".json", "tflite")):
    with open(path) as f:
      meta = json.load(f)
    assert meta["export"] == export
    assert meta["test_accuracy"] == result.test_accuracy
    assert meta["model"]["source"] == result.model["source"]
    assert meta["input_size"] == result.model["input_size"]
    assert "labels" in meta


@pytest.mark.parametrize("export", ["graph", "saved_model", "tflite"])
def test_label_image_classifies_a_folder_with_every_export(trained, export,
                                                           tmp_path):
  kind, config, result, tmp = trained
  model = {"graph": config.output_graph, "saved_model": config.saved_model_dir,
           "tflite": config.tflite_output}[export]
  folder = tmp_path / "new photos"
  folder.mkdir()
  for i, path in enumerate(result.test_paths[:3]):
    (folder / f"{i}{os.path.splitext(path)[1]}").write_bytes(
        open(path, "rb").read())
  (folder / "broken.jpg").write_bytes(b"not an image")
  proc = helpers.run_cli([f"--model={model}", f"--image={folder}",
                          "--format=json", "--top_k=1"],
                         module="retrain.label_image")
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = json.loads(proc.stdout)
  assert [os.path.basename(r["image"]) for r in rows] == [
      os.path.basename(p) for p in sorted(str(q) for q in folder.iterdir())
      if not p.endswith("broken.jpg")]
  for row, probs in zip(rows, result.test_probabilities[:3]):
    top = int(probs.argmax())
    assert row["top"][0]["label"] == result.labels[top]
    assert abs(row["top"][0]["probability"] - probs[top]) < 1e-4
  assert "skipped" in proc.stderr and "broken.jpg" in proc.stderr


def test_label_image_csv(trained):
  kind, config, result, tmp = trained
  proc = helpers.run_cli([f"--graph={config.output_graph}",
                          f"--image={result.test_paths[0]}",
                          f"--image={result.test_paths[1]}", "--format=csv",
                          "--top_k=0"], module="retrain.label_image")
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = list(csv.reader(io.StringIO(proc.stdout)))
  assert rows[0] == ["image", "rank", "label", "probability"]
  assert len(rows) == 1 + 2 * 3
  assert abs(sum(float(r[3]) for r in rows[1:4]) - 1) < 1e-4


def test_second_run_reads_the_cache_and_gives_the_same_numbers(
    trained, small_models):
  kind, config, result, tmp = trained
  before = {p: os.path.getmtime(os.path.join(config.bottleneck_dir, p))
            for p in helpers.files_under(config.bottleneck_dir)}
  again = pipeline.run(config._replace(saved_model_dir="", tflite_output="",
                                       intermediate_store_frequency=0),
                       FAST, _options(small_models, kind))
  assert again.bottlenecks_computed == 0
  assert again.bottlenecks_from_cache == 72
  after = {p: os.path.getmtime(os.path.join(config.bottleneck_dir, p))
           for p in helpers.files_under(config.bottleneck_dir)}
  assert before == after
  assert again.history == result.history
  np.testing.assert_array_equal(again.test_probabilities,
                                result.test_probabilities)


def test_label_image_cli_reads_the_json(trained):
  kind, config, result, tmp = trained
  image = result.test_paths[0]
  proc = helpers.run_cli([f"--graph={config.output_graph}",
                          f"--image={image}", "--top_k=2"],
                         module="retrain.label_image")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 2
  label, prob = lines[0].rsplit(" ", 1)
  top = int(result.test_probabilities[0].argmax())
  assert label == result.labels[top]
  assert abs(float(prob) - result.test_probabilities[0, top]) < 1e-4


def test_summaries_dir_keeps_what_was_there(small_models, color_images,
                                            tmp_path):
  config = helpers.run_config(tmp_path, color_images, saved_model_dir="")
  os.makedirs(config.summaries_dir)
  keep = os.path.join(config.summaries_dir, "mine.txt")
  with open(keep, "w") as f:
    f.write("precious")
  pipeline.run(config, FAST._replace(how_many_training_steps=10),
               _options(small_models, "graph"))
  with open(keep) as f:
    assert f.read() == "precious"
  assert len(os.listdir(config.summaries_dir)) == 2


def test_bad_config_writes_nothing(small_models, color_images, tmp_path):
  config = helpers.run_config(tmp_path, color_images)
  with pytest.raises(UserError, match="--testing_percentage plus"):
    pipeline.run(config._replace(testing_percentage=60,
                                 validation_percentage=40),
                 FAST, _options(small_models, "graph"))
  with pytest.raises(UserError, match="--bottleneck_tensor=nope:0"):
    pipeline.run(config, FAST, ModelOptions(
        graph=small_models["inception"], tfhub_module="",
        bottleneck_tensor="nope"))
  assert os.listdir(tmp_path) == []


def test_saved_model_dir_with_other_content_is_refused(small_models,
                                                       color_images,
                                                       tmp_path):
  target = tmp_path / "mine"
  target.mkdir()
  (target / "thesis.tex").write_text("do not delete")
  config = helpers.run_config(tmp_path, color_images,
                              saved_model_dir=str(target))
  with pytest.raises(UserError, match="holds something other"):
    pipeline.run(config, FAST, _options(small_models, "graph"))
  assert (target / "thesis.tex").read_text() == "do not delete"


def test_bottlenecks_over_the_memory_budget_train_from_disk_identically(
    trained, small_models, monkeypatch):
  kind, config, result, tmp = trained
  seen = []
  real_train = pipeline.train.train

  def spy(tg, session, train_set, validation_set, *args, **kwargs):
    seen.append((train_set.rows is not None, type(train_set.x)))
    return real_train(tg, session, train_set, validation_set, *args, **kwargs)

  monkeypatch.setattr(pipeline.train, "train", spy)
  again = pipeline.run(config._replace(saved_model_dir="", tflite_output="",
                                       summaries_dir="",
                                       intermediate_store_frequency=0,
                                       max_in_memory_mb=0.001),
                       FAST, _options(small_models, kind))
  assert seen == [(True, np.memmap)]
  assert again.history == result.history
  np.testing.assert_allclose(again.final_weights, result.final_weights,
                             atol=1e-6)
  np.testing.assert_allclose(again.test_probabilities,
                             result.test_probabilities, atol=1e-6)


def test_label_image_uses_the_preprocessing_the_json_records():
  from retrain.data import preprocess
  from retrain.deploy import classifiers
  recorded = {"model": {"preprocessing": preprocess.Preprocessing(
      jpeg_dct_keep=0, antialias_over=1.0).describe()}}
  assert classifiers._preprocessing(recorded) == preprocess.PREPROCESSINGS[
      "exact"]
  assert classifiers._preprocessing({"model": {"preprocessing": (
      preprocess.PREPROCESSINGS["fast"].describe())}}) == (
          preprocess.PREPROCESSINGS["fast"])
  # Exports written before the rule was recorded used DCT keep 2x and
  # always antialiased.
  assert classifiers._preprocessing({"model": {}}) == preprocess.Preprocessing(
      jpeg_dct_keep=2, antialias_over=1.0)


def test_export_graph_template_is_cached_and_checked(trained, small_models,
                                                     monkeypatch, tmp_path):
  kind, config, result, tmp = trained
  from retrain.deploy import export
  folder = os.path.join(config.bottleneck_dir, model.MODULE_CACHE)
  templates = [n for n in os.listdir(folder) if n.endswith(".export.pb")]
  assert len(templates) == 1
  import tensorflow as tf

  def graph(path):
    graph_def = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
      graph_def.ParseFromString(f.read())
    return graph_def
  first = graph(config.output_graph)

  def no_building(*args):
    raise AssertionError("the template was built again")
  monkeypatch.setattr(export, "inference_graph_template", no_building)
  out = tmp_path / "again.pb"
  again = config._replace(saved_model_dir="", tflite_output="",
                          summaries_dir="", intermediate_store_frequency=0,
                          output_graph=str(out))
  pipeline.run(again, FAST, _options(small_models, kind))
  assert graph(str(out)) == first  # Same weights, same template.
  # A template holding an unsafe op is not used: it is rebuilt.
  monkeypatch.undo()
  path = os.path.join(folder, templates[0])
  graph_def = graph(path)
  graph_def.node.add(name="sneaky", op="ReadFile")
  with open(path, "wb") as f:
    f.write(graph_def.SerializeToString())
  pipeline.run(again, FAST, _options(small_models, kind))
  # Rebuilt (function names inside may differ from the first build).
  assert {n.name for n in graph(str(out)).node} == {n.name
                                                     for n in first.node}
  assert "sneaky" not in {n.name for n in graph(path).node}


def test_classic_inception_inputs_feed_the_same_classifier(trained):
  """The Inception-named graph's export keeps Mul:0 ((x - 128) / 128) and
  DecodeJpeg/contents:0 (one JPEG), as the classic graph had."""
  kind, config, result, tmp = trained
  with open(os.path.splitext(config.output_graph)[0] + ".json") as f:
    inputs = json.load(f)["inputs"]
  if kind != "graph":  # The module's own input, taking [0, 1].
    assert (inputs["model_input"]["mean"], inputs["model_input"]["std"]) == (
        0.0, 255.0)
    assert "jpeg" not in inputs
    return
  assert inputs["model_input"]["name"] == "Mul:0"
  assert (inputs["model_input"]["mean"], inputs["model_input"]["std"]) == (
      128.0, 128.0)
  assert inputs["jpeg"]["name"] == "DecodeJpeg/contents:0"
  jpegs = [p for p in result.test_paths if p.endswith(".jpg")]
  assert jpegs
  rows = [result.test_paths.index(p) for p in jpegs]
  probs = helpers.export_probabilities("classic", config.output_graph, jpegs,
                                       tmp)
  np.testing.assert_allclose(probs["same"], result.test_probabilities[rows],
                             atol=1e-3)
  np.testing.assert_allclose(probs["jpeg"], result.test_probabilities[rows],
                             atol=1e-5)
  np.testing.assert_array_equal(probs["classic"].argmax(1),
                                result.test_probabilities[rows].argmax(1))
  # Feeding image_bytes a batch still works beside the JPEG input (its
  # batch size is not folded to the JPEG input's one image).
  batch = helpers.export_probabilities("graph", config.output_graph,
                                       result.test_paths, tmp)
  assert batch["bytes"].shape == result.test_probabilities.shape


def test_export_folder_can_be_moved(trained, tmp_path):
  """Paths in the JSON files are relative to them: a copied folder works."""
  import shutil
  kind, config, result, tmp = trained
  out = os.path.dirname(config.output_graph)
  for name in ("graph.json", "model.json"):
    with open(os.path.join(out, name)) as f:
      labels = json.load(f)["labels"]
    assert not os.path.isabs(labels), labels
  moved = tmp_path / "elsewhere"
  shutil.copytree(out, moved)
  shutil.move(out, str(tmp_path / "gone"))  # Nothing left at the old place.
  try:
    for model_path in (moved / "graph.pb", moved / "model.tflite",
                       moved / "saved_model"):
      proc = helpers.run_cli([f"--model={model_path}",
                              f"--image={result.test_paths[0]}",
                              "--top_k=1", "--format=csv"],
                             module="retrain.label_image")
      assert proc.returncode == 0, proc.stderr[-2000:]
      top = result.labels[int(result.test_probabilities[0].argmax())]
      assert f",1,{top}," in proc.stdout
  finally:
    shutil.move(str(tmp_path / "gone"), out)


def test_reports_are_written_beside_the_graph(trained):
  kind, config, result, tmp = trained
  out = os.path.dirname(config.output_graph)
  assert os.path.join(out, "report.html") in result.outputs
  with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
    page = f.read()
  assert "<script" not in page and "http://" not in page.replace(
      "http://www.w3.org/2000/svg", "")
  gallery = (page.split("id=misclassified>")[1].split("<h2")[0]
             if "id=misclassified>" in page else "")
  assert gallery.count("class=thumb") == len(result.report["misclassified"])
  # Every test image is in its confusion-matrix cell's section too.
  assert page.count("class=thumb") == len(result.report["misclassified"]) + (
      len(result.report["predictions"]))
  assert len(result.report["predictions"]) == len(result.test_paths)
