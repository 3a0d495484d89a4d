"""Stage 2: training the CNN's top from cached cut vectors."""

import numpy as np
import tensorflow as tf

from retrain.features import cut as cuts
from retrain.features.sets import LabeledBottlenecks
from retrain.training import finetune
from retrain.training import top as tops
from tests.test_finetune_graph import _chain_graph

tf1 = tf.compat.v1


def _task(seed=0, n=900):
  """Cut vectors of the chain graph's top (2 layers: r1 [8, 8, 4]) and
  3 classes decided by the channels' means (a mixing the frozen top does
  not compute)."""
  gd = _chain_graph()
  cut = cuts.choose_cut(gd, "pool:0", layers=2)
  shapes = cuts.cut_shapes(gd, "input:0", (8, 8), cut)
  rng = np.random.default_rng(seed)
  x = np.maximum(rng.normal(size=(n, 8, 8, 4)), 0).astype(np.float32)
  means = x.mean((1, 2))
  y = np.argmax(means @ np.array([[1, -1, 0], [0, 1, -1], [-1, 0, 1],
                                  [0.5, 0.5, -1]], np.float32), 1)
  x = x.reshape(n, -1)
  split = n * 2 // 3
  train = LabeledBottlenecks(x[:split], y[:split], [""] * split)
  validation = LabeledBottlenecks(x[split:], y[split:], [""] * (n - split))
  return gd, cut, shapes, train, validation


PARAMS = finetune.FineTuneParams(steps=600, learning_rate=0.05,
                                 batch_size=32, eval_interval=50)


def test_fine_tuning_learns_what_the_frozen_top_cannot():
  gd, cut, shapes, train, validation = _task()
  result = finetune.fine_tune(gd, cut, shapes, train, validation,
                              np.zeros([6, 3], np.float32),
                              np.zeros([3], np.float32), 3, PARAMS)
  print(f"validation accuracy {result.baseline_validation_accuracy:.3f} -> "
        f"{result.best_validation_accuracy:.3f} at step {result.best_step}")
  assert result.improved and result.best_step > 0
  assert result.best_validation_accuracy >= (
      result.baseline_validation_accuracy + 0.2)
  assert result.history[0].step == 0 and result.history[-1].step == 600
  original = tops.constant_values(gd, cut.trainable())
  assert sorted(result.values) == sorted(original)
  assert max(np.abs(result.values[t] - original[t]).max()
             for t in original) > 1e-3
  assert np.abs(result.weights).max() > 0


def test_stage_one_is_kept_when_stage_two_never_beats_it():
  gd, cut, shapes, train, validation = _task()
  good = finetune.fine_tune(gd, cut, shapes, train, validation,
                            np.zeros([6, 3], np.float32),
                            np.zeros([3], np.float32), 3, PARAMS)
  # The good model is now "stage 1": its weights in the frozen graph.
  stage1 = tops.frozen_with_values(gd, good.values)
  diverging = PARAMS._replace(learning_rate=1e4, steps=100)
  again = finetune.fine_tune(stage1, cut, shapes, train, validation,
                             good.weights, good.biases, 3, diverging)
  assert not again.improved and again.best_step == 0
  # Stage 1's model comes back, and it measures as it did.
  assert abs(again.baseline_validation_accuracy -
             good.best_validation_accuracy) < 1e-6
  for t, v in good.values.items():
    np.testing.assert_allclose(again.values[t], v, atol=1e-6)
  np.testing.assert_array_equal(again.weights, good.weights)


def test_patience_stops_after_evaluations_without_improvement():
  gd, cut, shapes, train, validation = _task()
  still = PARAMS._replace(learning_rate=1e-12, patience=2)
  result = finetune.fine_tune(gd, cut, shapes, train, validation,
                              np.zeros([6, 3], np.float32),
                              np.zeros([3], np.float32), 3, still)
  assert result.steps_run == 2 * still.eval_interval
  assert [p.step for p in result.history] == [0, 50, 100]


def test_cosine_schedule_falls_from_the_rate_to_nearly_zero():
  rate = [finetune.SCHEDULES["cosine"](t, 100) for t in range(1, 101)]
  assert rate[0] == 1.0 and 0 < rate[-1] < 1e-3
  assert all(a > b for a, b in zip(rate, rate[1:]))
  assert abs(rate[50] - 0.5) < 1e-9  # Step 51 of 100: halfway.
  assert finetune.SCHEDULES["constant"](100, 100) == 1.0


def test_last_pick_takes_the_last_model_or_stage_one(monkeypatch):
  """A run that learns, then wrecks the model in its last 5 steps (the
  rate times 1e4): pick=best keeps an earlier evaluation, pick=last gives
  stage 1's model back; without the wreck, pick=last keeps the last."""
  gd, cut, shapes, train, validation = _task()
  monkeypatch.setitem(finetune.SCHEDULES, "wreck",
                      lambda t, steps: 1e4 if t > steps - 5 else 1.0)
  zeros = np.zeros([6, 3], np.float32), np.zeros([3], np.float32)
  runs = {pick: finetune.fine_tune(
      gd, cut, shapes, train, validation, *zeros, 3,
      PARAMS._replace(schedule="wreck", pick=pick)) for pick in ("best",
                                                                 "last")}
  assert runs["best"].improved and 0 < runs["best"].best_step <= 550
  assert not runs["last"].improved and runs["last"].best_step == 0
  np.testing.assert_array_equal(runs["last"].weights, zeros[0])
  kept = finetune.fine_tune(gd, cut, shapes, train, validation, *zeros, 3,
                            PARAMS)  # Cosine, last.
  assert kept.improved and kept.best_step == kept.steps_run == 600
  assert kept.best_validation_accuracy == kept.history[-1].validation_accuracy
  assert (kept.history[-1].validation_cross_entropy <
          kept.history[0].validation_cross_entropy)


def test_weight_decay_shrinks_the_new_layer():
  gd, cut, shapes, train, validation = _task()
  zeros = np.zeros([6, 3], np.float32), np.zeros([3], np.float32)
  norms = {}
  for decay in (0.0, 0.3):
    result = finetune.fine_tune(gd, cut, shapes, train, validation, *zeros,
                                3, PARAMS._replace(weight_decay=decay))
    assert result.improved
    norms[decay] = np.linalg.norm(result.weights)
  print(norms)
  assert norms[0.3] < 0.7 * norms[0.0]


def test_pipeline_fine_tunes_exports_and_reports(small_models, color_images,
                                                 tmp_path):
  """A weak stage 1 (one tiny step) then stage 2 on the Inception-named graph:
  stage 2 wins on validation, and every export carries its weights (fresh
  process, 1e-5); the reports give both stages; a warm rerun computes no
  cut activation."""
  import json
  import os
  from retrain import pipeline
  from retrain.config import HParams, ModelOptions
  from tests import helpers
  config = helpers.run_config(tmp_path, color_images, testing_percentage=25,
                              validation_percentage=25,
                              tflite_output=str(tmp_path / "out" /
                                                "model.tflite"),
                              onnx_output=str(tmp_path / "out" /
                                              "model.onnx"))
  hparams = HParams(how_many_training_steps=1, learning_rate=1e-7,
                    eval_step_interval=5, fine_tune_layers=1,
                    fine_tune_steps=100, fine_tune_learning_rate=0.01)
  options = ModelOptions(graph=small_models["inception"], tfhub_module="")
  result = pipeline.run(config, hparams, options)
  stage = result.fine_tune
  assert stage is not None and stage.result.improved
  assert stage.cut_vectors_computed > 0 and stage.parameters == 3 * 2048
  assert result.model["source"].endswith("(fine-tuned)")
  stage1 = np.mean(stage.result.history[0].validation_accuracy)
  assert stage.result.best_validation_accuracy > stage1
  for kind, path in (("graph", config.output_graph),
                     ("saved_model", config.saved_model_dir)):
    probs = helpers.export_probabilities(kind, path, result.test_paths,
                                         tmp_path)
    np.testing.assert_allclose(probs["bytes"], result.test_probabilities,
                               atol=1e-5)
  tflite = helpers.export_probabilities("tflite", config.tflite_output,
                                        result.test_paths, tmp_path)
  np.testing.assert_allclose(tflite["float"], result.test_probabilities,
                             atol=1e-4)
  # ONNX Runtime on the fine-tuned model: the graph's answers on the same
  # decoded images.
  onnx = helpers.export_probabilities("onnx", config.onnx_output,
                                      result.test_paths, tmp_path)
  graph = helpers.export_probabilities("graph", config.output_graph,
                                       result.test_paths, tmp_path)
  np.testing.assert_allclose(onnx["float"], graph["float"], atol=1e-5)
  out = os.path.dirname(config.output_graph)
  with open(os.path.join(out, "report.json")) as f:
    stages = json.load(f)["stages"]
  assert [s["stage"] for s in stages] == ["new softmax layer", "fine-tuning"]
  assert stages[1]["exported"] and stages[1]["steps"] == 100
  # Defaults: cosine rate from 0.01, the last model, no decay.
  assert (stages[1]["schedule"], stages[1]["pick"],
          stages[1]["learning_rate"], stages[1]["weight_decay"]) == (
              "cosine", "last", 0.01, 0.0)
  assert "Stage: fine-tuning" in open(os.path.join(out, "report.txt")).read()
  # Two charts (accuracy, cross entropy), each train and validation, for
  # each stage.
  assert open(os.path.join(out, "report.html")).read().count(
      "<polyline") == 8
  again = pipeline.run(config._replace(saved_model_dir="", tflite_output="",
                                       onnx_output=""),
                       hparams, options)
  assert again.fine_tune.cut_vectors_computed == 0
  np.testing.assert_allclose(again.test_probabilities,
                             result.test_probabilities, atol=1e-6)


def test_stage_one_is_exported_when_fine_tuning_does_not_help(
    small_models, color_images, tmp_path):
  from retrain import pipeline
  from retrain.config import HParams, ModelOptions
  from tests import helpers
  config = helpers.run_config(tmp_path, color_images, saved_model_dir="")
  hparams = HParams(how_many_training_steps=200, learning_rate=0.05,
                    eval_step_interval=50, fine_tune_layers=1,
                    fine_tune_steps=20, fine_tune_learning_rate=1e-9,
                    weight_decay=0.03, fine_tune_weight_decay=-1)
  options = ModelOptions(graph=small_models["inception"], tfhub_module="")
  result = pipeline.run(config, hparams, options)
  assert not result.fine_tune.result.improved
  # -1: stage 1's decay.
  assert result.fine_tune.params.weight_decay == (
      result.report["regularization"]["chosen"]["weight_decay"]) == 0.03
  assert not result.model["source"].endswith("(fine-tuned)")
  probs = helpers.export_probabilities("graph", config.output_graph,
                                       result.test_paths, tmp_path)
  np.testing.assert_allclose(probs["bytes"], result.test_probabilities,
                             atol=1e-5)


def test_augmented_cut_vectors_past_the_memory_budget_stay_on_disk(
    small_models, color_images, tmp_path, monkeypatch):
  """Stage 2 with an augmented copy and --max_in_memory_mb below the cut
  vectors: each step reads its batch, evaluations read in batches, from
  the memory-mapped cache files; the model is the same as in memory."""
  from retrain import pipeline
  from retrain.config import HParams, ModelOptions
  from tests import helpers
  config = helpers.run_config(tmp_path, color_images, saved_model_dir="",
                              tflite_output="", summaries_dir="",
                              testing_percentage=25,
                              validation_percentage=25, flip_left_right=True,
                              augmentation_copies=1)
  hparams = HParams(how_many_training_steps=1, learning_rate=1e-7,
                    eval_step_interval=10, fine_tune_layers=1,
                    fine_tune_steps=40, fine_tune_learning_rate=0.01)
  options = ModelOptions(graph=small_models["inception"], tfhub_module="")
  in_memory = pipeline.run(config, hparams, options)
  seen = []
  real = finetune.fine_tune

  def spy(graph_def, cut, shapes, train, validation, *args, **kwargs):
    seen.append((type(train.x).__name__, train.rows is not None,
                 isinstance(validation.x, np.memmap),
                 isinstance(kwargs["test"].x, np.memmap)))
    return real(graph_def, cut, shapes, train, validation, *args, **kwargs)

  monkeypatch.setattr(finetune, "fine_tune", spy)
  on_disk = pipeline.run(config._replace(max_in_memory_mb=0.001), hparams,
                         options)
  assert seen == [("StackedRows", True, True, True)]
  assert on_disk.fine_tune.cut_vectors_computed == 0
  a, b = in_memory.fine_tune.result, on_disk.fine_tune.result
  assert a.improved and a.history == b.history
  np.testing.assert_allclose(on_disk.test_probabilities,
                             in_memory.test_probabilities, atol=1e-6)
