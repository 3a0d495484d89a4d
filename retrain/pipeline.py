"""The whole job, stage by stage: files -> split -> bottlenecks -> training
-> evaluation -> export.

`run` is the library entry point and reads as the job; each stage is a
function with typed inputs and outputs. `python -m retrain` parses flags into
the config tuples and calls `run`.
"""

import concurrent.futures
import dataclasses
import datetime
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

import cache
from cache import fs
from retrain.audit import act as audit_act
from retrain.audit import findings as audit_findings
from retrain.audit import memo as audit_memo
from retrain.audit import quality as audit_quality
from retrain.checks import check_config
from retrain.config import HParams, ModelOptions, RunConfig
from retrain.data import images
from retrain.deploy import export, exports
from retrain.errors import UserError
from retrain.features import bottlenecks
from retrain.features import cut as cuts
from retrain.features import storage  # pylint: disable=unused-import  (gs://, ram://)
from retrain.features.model import FeatureExtractor, load_feature_extractor
from retrain.features import sets as sets_lib
from retrain.features.sets import LabeledBottlenecks
from retrain.reports import phases, report, report_html
from retrain.reports.progress import Progress
from retrain.training import finetune, per_model, regularization, train
from retrain.training import unknown as unknown_class

tf1 = tf.compat.v1

# Without an explicit --eval_step_interval, a log file gets an evaluation
# line about every this share of the steps (and the last).
EVAL_LOG_SHARE = 0.05


@dataclasses.dataclass
class RunResult:
  """What a run measured and wrote."""
  labels: List[str]
  test_accuracy: Optional[float]
  test_paths: List[str]
  test_truth: np.ndarray  # int [n]
  test_probabilities: np.ndarray  # float32 [n, classes], trained session
  history: List[train.EvalPoint]
  skipped: List[Tuple[str, str]]
  bottlenecks_from_cache: int
  bottlenecks_computed: int
  set_sizes: Dict[str, int]
  outputs: List[str]
  model: Dict[str, object]
  final_weights: np.ndarray  # float32 [D, classes]
  final_biases: np.ndarray  # float32 [classes]
  report: Optional[Dict[str, object]]  # report.classification_report
  augmented_computed: int
  fine_tune: Optional[finetune.Stage] = None  # Stage 2, when asked for.


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The labeled, split image files and the pretrained model."""
  image_lists: images.ImageLists
  fx: FeatureExtractor

  @property
  def labels(self) -> List[str]:
    return self.image_lists.labels


@dataclasses.dataclass(frozen=True)
class Bottlenecks:
  """Every usable image's bottleneck, by set (images.CATEGORIES)."""
  sets: Dict[str, LabeledBottlenecks]
  filled: cache.FillResult  # The originals: from cache, computed, skipped.
  augmented_computed: int
  # Each original's photo statistics (for the audit); None without it.
  photo_stats: Optional[bottlenecks.PhotoStats] = None

  @property
  def sizes(self) -> Dict[str, int]:
    return {cat: len(s) for cat, s in self.sets.items()}


@dataclasses.dataclass(frozen=True)
class Predictions:
  """A trained layer's probabilities on (a sample of) the test set."""
  paths: List[str]
  truth: np.ndarray  # int64 [n]
  probabilities: np.ndarray  # float32 [n, classes]


@dataclasses.dataclass(frozen=True)
class TrainedLayer:
  """The new layer after training, and what training measured and wrote."""
  weights: np.ndarray  # float32 [D, classes]
  biases: np.ndarray  # float32 [classes]
  history: List[train.EvalPoint]
  test: Predictions
  seconds: float
  outputs: List[str]  # Intermediate graphs.
  regularization: regularization.Choice  # How the layer was regularized.


@dataclasses.dataclass(frozen=True)
class FinalModel:
  """The model a run exports: stage 1's layer on the pretrained CNN, or the
  fine-tuned CNN and layer when stage 2 beat it on validation."""
  fx: FeatureExtractor
  weights: np.ndarray  # float32 [D, classes]
  biases: np.ndarray  # float32 [classes]
  test: Predictions  # [n, classes (+ 1 with an unknown class)]
  template: "concurrent.futures.Future[tf1.GraphDef]"  # Its export graph.
  labels: List[str]  # In output order; the unknown class last.
  # With --unknown_label: the class (training/unknown.py) and its report.
  unknown: Optional[unknown_class.UnknownClass] = None
  unknown_report: Optional[Dict[str, object]] = None


def run(config: RunConfig, hparams: HParams = HParams(),
        model_options: ModelOptions = ModelOptions()) -> RunResult:
  """Retrains and exports. Raises UserError for bad input, before writing."""
  check_config(config, hparams)
  clock = phases.Phases()
  inputs = clock.timed("model load", load_inputs, config, model_options,
                       hparams)
  data = clock.timed("extraction", compute_bottlenecks, inputs, config,
                     hparams.random_seed)
  audit = clock.timed("audit", audit_images, inputs, data, config, hparams)
  data, audit = act_on_audit(data, audit, config)
  # The search before the export graph's preparation starts beside
  # training: its numpy products would share the cores with it.
  choice = clock.timed("search", choose_regularization, inputs, data, config,
                       hparams)
  scores = clock.timed("models", compare_models, inputs, data, choice,
                       config, hparams) if inputs.fx.members else []
  template = _in_background(export.cached_inference_graph_template,
                            inputs.fx, config.final_tensor_name,
                            config.bottleneck_dir, bool(config.unknown_label))
  with Summaries(config.summaries_dir) as summaries:
    layer = clock.timed("training", train_layer, inputs, data, config,
                        hparams, template, summaries, choice)
    tuned = clock.timed("fine-tuning", fine_tune_top, inputs, layer, config,
                        hparams, summaries, data)
    final = final_model(inputs, layer, tuned, template, config)
    if config.unknown_label:
      final = clock.timed("unknown", add_unknown_class, inputs, data, final,
                          tuned, config, hparams)
    evaluation = evaluate(final, layer, config, summaries,
                          hparams.how_many_training_steps, audit)
  # The model first: a run that stops (a full disk) leaves no reports
  # without the model they describe.
  outputs = layer.outputs + clock.timed("export", export_model, inputs, data,
                                        final, evaluation, config, hparams)
  if evaluation is not None:  # Where the time went, so far: report.json.
    evaluation = dict(evaluation, phases=clock.taken(),
                      **({"models": scores} if scores else {}))
  outputs += clock.timed("reports", write_reports, inputs, data, layer, tuned,
                         evaluation, config, hparams, audit)
  for path in outputs:
    logging.info("Wrote %s", fs.abspath(path))
  logging.info("%s", clock.describe())
  return RunResult(
      final.labels, evaluation and evaluation["accuracy"], final.test.paths,
      final.test.truth, final.test.probabilities, layer.history,
      data.filled.failures, data.filled.from_cache, data.filled.computed,
      data.sizes, outputs, final.fx.describe(), final.weights, final.biases,
      evaluation, data.augmented_computed, tuned)


def cache_bottlenecks(config: RunConfig, hparams: HParams = HParams(),
                      model_options: ModelOptions = ModelOptions()
                      ) -> Bottlenecks:
  """The first stages of `run` alone: every bottleneck (and augmented copy,
  and with fine-tuning flags every cut activation) computed into the cache,
  so that a large extraction can run as its own job and training later,
  from the cache. Writes nothing but the cache."""
  check_config(config, hparams)
  inputs = load_inputs(config, model_options, hparams)
  data = compute_bottlenecks(inputs, config, hparams.random_seed, load=False)
  if hparams.fine_tuning():  # Stage 2's inputs too.
    finetune.cut_vectors(inputs.image_lists, inputs.fx, config, hparams)
  logging.info("Cached in %s; a run without --only_bottlenecks trains from "
               "it", config.bottleneck_dir)
  return data


def audit_cache(config: RunConfig, hparams: HParams = HParams(),
                model_options: ModelOptions = ModelOptions(),
                output_dir: str = "") -> audit_findings.Audit:
  """The audit alone, on the bottlenecks already cached for
  config.image_dir (`python -m retrain.audit`): computes and changes
  nothing, writes audit.json and audit.html into output_dir (default: the
  folder of --output_graph, where a run writes its reports)."""
  check_config(config, hparams)
  inputs = load_inputs(config, model_options, hparams)
  sets, missing = bottlenecks.cached_bottlenecks(
      inputs.image_lists, inputs.fx, config.bottleneck_dir)
  vectors, set_names = audit_findings.originals(sets,
                                                bottlenecks.AUGMENTED_MARK)
  if not len(vectors):
    raise UserError(f"--bottleneck_dir={config.bottleneck_dir}: no cached "
                    f"bottleneck of the images in {config.image_dir} for "
                    "this model; run python -m retrain (or with "
                    "--only_bottlenecks) with the same model flags first")
  if missing:
    logging.warning("%d of the images have no cached bottleneck for this "
                    "model and are not audited (first: %s); python -m "
                    "retrain --only_bottlenecks computes them", len(missing),
                    missing[0])
  audit = audit_memo.audited(vectors, set_names, inputs.labels, hparams,
                             config.bottleneck_dir, keep=False)
  stats = bottlenecks.photo_statistics(inputs.image_lists, inputs.fx,
                                       config, read_only=True)
  if stats.paths:  # Cached by a run since photo statistics exist.
    audit = audit_quality.attach(
        audit, stats.paths, stats.values, vectors.paths,
        [inputs.labels[int(c)] for c in vectors.y], set_names,
        inputs.fx.input_size)
  logging.info("%s", audit.summary())
  folder = output_dir or fs.dirname(fs.abspath(config.output_graph))
  fs.makedirs(folder)
  for path in (audit.write(folder),
               report_html.write_audit_html(folder, audit.to_json())):
    logging.info("Wrote %s", fs.abspath(path))
  return audit


# ------------------------------------------------------------------ stages --

def load_inputs(config: RunConfig, model_options: ModelOptions,
                hparams: HParams = HParams()) -> Inputs:
  """Lists and splits the images and loads the model (checks, no writes;
  a fine-tuning cut that cannot be made is an error now, not after stage
  1)."""
  image_lists = images.list_images(config.image_dir, config.testing_percentage,
                                   config.validation_percentage)
  if config.unknown_label in image_lists.labels:
    raise UserError(f"--unknown_label={config.unknown_label}: a class of "
                    f"{config.image_dir} has that label; choose another")
  if config.unknown_dir:  # A folder without photos: an error now.
    images.folder_images(config.unknown_dir)
  fx = load_feature_extractor(model_options, config.bottleneck_dir)
  if hparams.fine_tuning() and fx.members:
    raise UserError("--fine_tune_layers/--fine_tune_from: fine-tuning works "
                    f"on one model, and {len(fx.members)} are given; "
                    "fine-tune each alone, or train one layer on all")
  if hparams.fine_tuning():
    cuts.choose_cut(fx.graph_def, fx.bottleneck_tensor,
                    hparams.fine_tune_layers, hparams.fine_tune_from or None)
  for warning in image_lists.warnings:
    logging.warning("%s", warning)
  logging.info("%d classes: %s", len(image_lists.labels),
               ", ".join(image_lists.labels))
  for model in fx.members or [fx]:
    logging.info("Model %s: input %s %dx%d, bottleneck %s (%d-d)",
                 model.source, model.input_tensor, *model.input_size,
                 model.bottleneck_tensor, model.bottleneck_size)
  if fx.members:
    logging.info("%d models, one classifier: it takes %dx%d images at %s "
                 "(scaled as the largest model takes them); its features "
                 "are each model's, L2-normalised, side by side (%d-d)",
                 len(fx.members), *fx.input_size, fx.input_tensor,
                 fx.bottleneck_size)
  return Inputs(image_lists, fx)


def compute_bottlenecks(inputs: Inputs, config: RunConfig,
                        random_seed: int, load: bool = True) -> Bottlenecks:
  """Every image's bottleneck (cached or computed), ready for training:
  in memory (if `load`, within the memory budget), else read from the
  memory-mapped cache index."""
  decoded: Optional[Dict[str, np.ndarray]] = {} if config.audit else None
  sets, filled, augmented = bottlenecks.compute_bottlenecks(
      inputs.image_lists, inputs.fx, config, random_seed, stats=decoded)
  logging.info("Bottlenecks: %d from cache, %d computed, %d skipped",
               filled.from_cache, filled.computed, len(filled.failures))
  for path, reason in filled.failures:
    logging.warning("Skipped %s: %s", path, reason)
  stats = (bottlenecks.photo_statistics(inputs.image_lists, inputs.fx,
                                        config, decoded)
           if config.audit else None)
  data = Bottlenecks(bottlenecks.keep_in_memory(sets, config) if load
                     else sets, filled, augmented, stats)
  sizes = data.sizes
  logging.info("Images: %d training, %d validation, %d testing",
               sizes[images.TRAINING], sizes[images.VALIDATION],
               sizes[images.TESTING])
  present = set(data.sets[images.TRAINING].y.tolist())
  if len(present) < 2:
    raise UserError(f"--image_dir={config.image_dir}: fewer than 2 classes "
                    "have a usable training image; add images")
  for index, label in enumerate(inputs.labels):
    if index not in present:
      logging.warning("class %r has no usable training image; it will never "
                      "be predicted", label)
  return data


def audit_images(inputs: Inputs, data: Bottlenecks, config: RunConfig,
                 hparams: HParams) -> Optional[audit_findings.Audit]:
  """The audit of every original image from its cached bottleneck
  (retrain/audit/), logged; None with --noaudit (unless --dedupe needs
  it)."""
  if not (config.audit or config.dedupe != "none"):
    return None
  vectors, set_names = audit_findings.originals(data.sets,
                                                bottlenecks.AUGMENTED_MARK)
  audit = audit_memo.audited(vectors, set_names, inputs.labels, hparams,
                             config.bottleneck_dir)
  if data.photo_stats is not None:
    audit = audit_quality.attach(
        audit, data.photo_stats.paths, data.photo_stats.values,
        vectors.paths, [inputs.labels[int(c)] for c in vectors.y],
        set_names, inputs.fx.input_size)
  logging.info("%s", audit.summary())
  return audit


def act_on_audit(data: Bottlenecks, audit: Optional[audit_findings.Audit],
                 config: RunConfig
                 ) -> Tuple[Bottlenecks, Optional[audit_findings.Audit]]:
  """The sets after --dedupe and --exclude_from_training (never by
  default; nothing on disk changes), and the audit of the sets as they
  are then (after --dedupe, no group spans two sets)."""
  sets = data.sets
  mark = bottlenecks.AUGMENTED_MARK
  if config.dedupe == "group" and audit is not None:
    sets, moved, audit = audit_act.dedupe(sets, audit, mark)
    logging.info("--dedupe=group: %d images moved so that no duplicate "
                 "group spans two sets", moved)
  if config.exclude_from_training:
    sets, left_out = audit_act.exclude(
        sets, audit_act.excluded_paths(config.exclude_from_training), mark)
    logging.info("--exclude_from_training: %d training images left out "
                 "(listed in %s)", left_out, config.exclude_from_training)
  if sets is not data.sets:
    data = dataclasses.replace(data, sets=sets)
  return data, audit


class Summaries:
  """TensorBoard writers of one run (a new run-<time>-<pid> folder), or
  none when `folder` is empty. A context manager: closed on exit."""

  def __init__(self, folder: str):
    self.folder = folder
    self.run_dir = None
    self.train = self.validation = None
    if folder:
      name = datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S-") + str(
          os.getpid())
      self.run_dir = os.path.join(folder, name)

  def open(self, graph: tf.Graph) -> None:
    """Creates the writers; the train writer records `graph`."""
    if not self.run_dir:
      return
    with graph.as_default():
      self.train = tf1.summary.FileWriter(
          os.path.join(self.run_dir, "train"), graph)
      self.validation = tf1.summary.FileWriter(
          os.path.join(self.run_dir, "validation"))
    logging.info("TensorBoard summaries in %s", self.run_dir)

  def __enter__(self) -> "Summaries":
    return self

  def __exit__(self, *exc) -> None:
    for writer in (self.train, self.validation):
      if writer is not None:
        writer.close()


def choose_regularization(inputs: Inputs, data: Bottlenecks,
                          config: RunConfig, hparams: HParams
                          ) -> regularization.Choice:
  """The new layer's weight decay, learning rate and label smoothing: the
  flags', or chosen on held-out images (training/regularization.py); a
  choice kept in the cache folder is read. Logged."""
  choice = regularization.choose(data.sets[images.TRAINING],
                                 data.sets[images.VALIDATION],
                                 len(inputs.labels), hparams,
                                 config.bottleneck_dir)
  logging.info("%s", choice.describe())
  return choice


def compare_models(inputs: Inputs, data: Bottlenecks, choice:
                   regularization.Choice, config: RunConfig,
                   hparams: HParams) -> List[Dict[str, object]]:
  """With several models, each alone and the combination scored the same
  way, with time per photo and size (training/per_model.py); logged. Empty
  for one model."""
  scores = per_model.compare(inputs.fx, data.sets, len(inputs.labels),
                             hparams, choice, config.bottleneck_dir)
  for score in scores:
    logging.info("Model %s", score.describe())
  advice = per_model.advice(scores)
  if advice:
    logging.warning("%s", advice)
  return [dataclasses.asdict(score) for score in scores]


def train_layer(inputs: Inputs, data: Bottlenecks, config: RunConfig,
                hparams: HParams,
                template: "concurrent.futures.Future[tf1.GraphDef]",
                summaries: Summaries,
                choice: Optional[regularization.Choice] = None
                ) -> TrainedLayer:
  """Trains the new softmax layer on the bottlenecks with the regularization
  choice (made here when not given); predicts the test set.

  Stores intermediate graphs (filled into `template`) and checkpoints as
  configured.
  """
  if choice is None:
    choice = choose_regularization(inputs, data, config, hparams)
  start = time.monotonic()
  class_count = len(inputs.labels)
  hparams = regularization.resolved(hparams, choice)
  tg = train.build_training_graph(inputs.fx.bottleneck_size, class_count,
                                  hparams, config.final_tensor_name)
  summaries.open(tg.graph)
  log_eval = _EvaluationLog("Training", "Step",
                            hparams.how_many_training_steps, config, hparams)
  written: List[str] = []
  with tf1.Session(graph=tg.graph) as session:
    try:
      history = train.train(
          tg, session, data.sets[images.TRAINING],
          data.sets[images.VALIDATION], class_count, hparams, log=log_eval,
          train_writer=summaries.train,
          validation_writer=summaries.validation,
          on_interval=exports.intermediate_exporter(
              config, template, lambda: train.final_layer(tg, session),
              exports.graph_metadata(inputs.fx, inputs.labels + (
                  [config.unknown_label] if config.unknown_label else []),
                                     config),
              written, unknown_class.UnknownClass.disabled(
                  inputs.fx.bottleneck_size) if config.unknown_label
              else None),
          store_every=config.intermediate_store_frequency)
    finally:
      log_eval.close()
    if config.checkpoint_path:
      tg.saver.save(session, config.checkpoint_path, write_meta_graph=False,
                    write_state=False)
    test_set = data.sets[images.TESTING]
    rng = np.random.default_rng(hparams.random_seed + 1)
    pick = train.sample_subset(len(test_set), hparams.test_batch_size, rng)
    test = Predictions([test_set.paths[i] for i in pick], test_set.y[pick],
                       train.predict(tg, session, test_set.take(pick)))
    weights, biases = train.final_layer(tg, session)
  return TrainedLayer(weights, biases, history, test,
                      time.monotonic() - start, written, choice)


class _EvaluationLog:
  """Evaluations as a live bar on a terminal, else as log lines: one about
  every EVAL_LOG_SHARE of the steps (a multiple of the evaluation interval)
  and the last, or every one when --eval_step_interval was given."""

  def __init__(self, what: str, line: str, steps: int, config: RunConfig,
               hparams: HParams):
    self.progress = Progress(what, steps, log_every=0)
    self.line = line
    self.steps = steps
    every = hparams.eval_step_interval
    self.every = config.eval_log_interval or every * max(
        1, round(steps * EVAL_LOG_SHARE / every))

  def __call__(self, step: int, text: str) -> None:
    if self.progress.tty:
      self.progress.update(step, text)
    elif step % self.every == 0 or step == self.steps:
      logging.info("%s %d/%d: %s", self.line, step, self.steps, text)

  def close(self) -> None:
    self.progress.close()


def fine_tune_top(inputs: Inputs, layer: TrainedLayer, config: RunConfig,
                  hparams: HParams, summaries: Summaries,
                  data: Optional[Bottlenecks] = None
                  ) -> Optional[finetune.Stage]:
  """Stage 2 (--fine_tune_layers or --fine_tune_from): the top of the CNN
  and the new layer trained together from cached cut activations; None
  when not asked for. With --unknown_label, the kept model's bottlenecks
  of the photos the unknown class needs come back too."""
  if not hparams.fine_tuning():
    return None
  unknown_photos = (_unknown_photos(data, layer.test.paths, config, hparams)
                    if config.unknown_label and data is not None else {})
  lines: List[_EvaluationLog] = []

  def log(point: finetune.StagePoint, steps: int) -> None:
    if not lines:  # The number of steps is known from the first call.
      lines.append(_EvaluationLog("Fine-tuning", "Fine-tuning step", steps,
                                  config, hparams))
    text = f"validation accuracy {point.validation_accuracy * 100:.1f}%"
    if point.train_accuracy is not None:
      text = (f"train accuracy {point.train_accuracy * 100:.1f}%, cross "
              f"entropy {point.cross_entropy:.4f}, {text}")
      if summaries.train is not None:
        summaries.train.add_summary(_scalars(
            fine_tune_accuracy=point.train_accuracy,
            fine_tune_cross_entropy=point.cross_entropy), point.step)
    if summaries.validation is not None:
      summaries.validation.add_summary(_scalars(
          fine_tune_accuracy=point.validation_accuracy), point.step)
    lines[0](point.step, text)
  try:
    return finetune.run_stage(inputs.image_lists, inputs.fx, config, hparams,
                              layer.weights, layer.biases, layer.test.paths,
                              log, layer.regularization.chosen.weight_decay,
                              unknown_photos or None)
  finally:
    for line in lines:
      line.close()


def _scalars(**values: float) -> tf1.Summary:
  return tf1.Summary(value=[tf1.Summary.Value(tag=k, simple_value=v)
                            for k, v in values.items()])


def final_model(inputs: Inputs, layer: TrainedLayer,
                tuned: Optional[finetune.Stage],
                template: "concurrent.futures.Future[tf1.GraphDef]",
                config: RunConfig) -> FinalModel:
  """The model to evaluate and export: stage 2's if it beat stage 1 on
  validation, else stage 1's."""
  if tuned is None or not tuned.result.improved:
    return FinalModel(inputs.fx, layer.weights, layer.biases, layer.test,
                      template, inputs.labels)
  test = Predictions(layer.test.paths, layer.test.truth,
                     tuned.result.test_probabilities)
  # Not kept in the cache folder: each fine-tuned model is new.
  return FinalModel(tuned.fx, tuned.result.weights, tuned.result.biases,
                    test, _in_background(export.inference_graph_template,
                                         tuned.fx, config.final_tensor_name,
                                         bool(config.unknown_label)),
                    inputs.labels)


def add_unknown_class(inputs: Inputs, data: Bottlenecks, final: FinalModel,
                      tuned: Optional[finetune.Stage], config: RunConfig,
                      hparams: HParams) -> FinalModel:
  """--unknown_label: the final model with one more class, last, answered
  for photos far from every kept training photo (training/unknown.py);
  its threshold accepts --unknown_accept of the validation photos. The
  test photos' answers gain its column; --unknown_dir photos are scored.
  Logged; its report in final.unknown_report."""
  photos = _unknown_photos(data, final.test.paths, config, hparams)
  cached = sets_lib.by_paths(data.sets, photos)
  truth = {name: s.y for name, s in cached.items()}
  if tuned is not None and tuned.result.improved:  # The tuned CNN's.
    vectors = {name: tuned.result.features[name] for name in photos}
  else:
    vectors = {name: s.take(np.arange(len(s))) for name, s in cached.items()}
  known = lambda x: unknown_class.layer_probabilities(  # pylint: disable=g-long-lambda
      x, final.weights, final.biases)
  validation = known(vectors["validation"])
  others, calibration = {}, {}
  if config.unknown_dir:
    x, paths, failures = bottlenecks.folder_bottlenecks(
        config.unknown_dir, final.fx, config)
    for path, reason in failures:
      logging.warning("Skipped %s: %s", path, reason)
    if config.unknown_reject:  # Half to set the threshold, half to report.
      half = np.array([images.assign_category(
          os.path.relpath(p, config.unknown_dir), 50, 0) == images.TESTING
                       for p in paths], bool)
      if half.all() or not half.any():
        raise UserError(f"--unknown_dir={config.unknown_dir}: too few "
                        "photos to set the threshold on half and report on "
                        "the other (--unknown_reject); add photos")
      calibration = dict(others_x=x[~half],
                         others_probabilities=known(x[~half]),
                         reject=config.unknown_reject)
      x, paths = x[half], [p for p, h in zip(paths, half) if h]
    others = dict(others_x=x, others_paths=paths)
  fitted = unknown_class.fit_unknown(
      vectors["training"], truth["training"], vectors["validation"],
      validation, config.unknown_accept, config.unknown_keep,
      seed=hparams.random_seed, **calibration)
  accepted = None
  if len(validation):
    answers = fitted.extend(validation, vectors["validation"]).argmax(1)
    accepted = float(np.mean(answers < len(inputs.labels)))
  test = Predictions(final.test.paths, final.test.truth, fitted.extend(
      final.test.probabilities, vectors["testing"]))
  if others:
    others["others_probabilities"] = fitted.extend(
        known(others["others_x"]), others["others_x"])
  report_json = unknown_class.evaluate(
      fitted, config.unknown_label, config.unknown_accept,
      vectors["testing"], test.truth, test.probabilities, accepted, **others)
  if config.unknown_reject:
    report_json.update(
        threshold_from=f"--unknown_reject={config.unknown_reject:g} on "
        f"{len(calibration['others_x'])} of the --unknown_dir photos; the "
        f"other {len(others['others_x'])} reported")
  logging.info("%s", unknown_class.describe(report_json))
  return dataclasses.replace(
      final, test=test, labels=inputs.labels + [config.unknown_label],
      unknown=fitted, unknown_report=report_json)


def evaluate(final: FinalModel, layer: TrainedLayer,
             config: RunConfig, summaries: Summaries, step: int,
             audit: Optional[audit_findings.Audit] = None
             ) -> Optional[Dict[str, object]]:
  """The final model's classification report on the test set (None
  without test images) with how the new layer was regularized, the
  unknown class's report (an unknown answer counts as an error) and,
  after an audit, the accuracy on the test images that leak nothing;
  logged, and its confusion matrix in TensorBoard."""
  labels, test = final.labels, final.test
  if not len(test.truth):
    logging.warning("No test images: the test accuracy is not measured "
                    "(raise --testing_percentage)")
    return None
  evaluation = report.classification_report(
      test.truth, test.probabilities.argmax(1), labels, test.paths,
      test.probabilities, answer_only=int(final.unknown is not None))
  evaluation["regularization"] = layer.regularization.to_json()
  if final.unknown_report is not None:
    evaluation["unknown"] = final.unknown_report
  logging.info("Final test accuracy = %.1f%% (N=%d)",
               evaluation["accuracy"] * 100, len(test.truth))
  if audit is not None:
    audit = audit.with_test_accuracy(test.paths, test.truth,
                                     test.probabilities.argmax(1))
    evaluation["test_accuracy_leak_free"] = audit.test_accuracy_leak_free
    evaluation["test_images_leak_free"] = audit.test_images_leak_free
    evaluation["audit"] = audit.counts()
    if audit.leaked_test_images and audit.test_accuracy_leak_free is not None:
      logging.info("Test accuracy without the %d leaked images = %.1f%% "
                   "(N=%d)", audit.counts()["leaked_test_images"],
                   audit.test_accuracy_leak_free * 100,
                   audit.test_images_leak_free)
  text = report.format_report(evaluation)
  per_class = text.split("\nConfusion")[0].split("\n", 2)[2]
  logging.info("Per class:\n%s", per_class.rstrip())
  if config.print_misclassified_test_images:
    logging.info("=== MISCLASSIFIED TEST IMAGES ===")
    for row in evaluation["misclassified"]:
      logging.info("%s: true %s, predicted %s (%.3f)", row["image"],
                   row["true"], row["predicted"], row["probability"])
  if summaries.validation is not None:
    summaries.validation.add_summary(_image_summary(
        "test_confusion_matrix",
        report.confusion_image(evaluation["confusion_matrix"])), step)
  return evaluation


def write_reports(inputs: Inputs, data: Bottlenecks, layer: TrainedLayer,
                  tuned: Optional[finetune.Stage],
                  evaluation: Optional[Dict[str, object]], config: RunConfig,
                  hparams: HParams,
                  audit: Optional[audit_findings.Audit] = None) -> List[str]:
  """audit.json, report.json, report.txt, report.html (and the confusion
  matrix plot) beside --output_graph; no report without test images. With
  fine-tuning, both stages' validation and test accuracy, steps and
  time."""
  folder = fs.dirname(fs.abspath(config.output_graph))
  audited: List[str] = []
  if audit is not None and config.audit:
    if evaluation is not None:
      audit = dataclasses.replace(
          audit,
          test_accuracy_leak_free=evaluation["test_accuracy_leak_free"],
          test_images_leak_free=evaluation["test_images_leak_free"])
    audited.append(audit.write(folder))
  if evaluation is None:
    return audited
  if tuned is not None:
    evaluation = dict(evaluation, stages=_stages(layer, tuned))
  written = report.write_reports(folder, evaluation)
  sizes = data.sizes
  facts = {
      "model": inputs.fx.source,
      "images": (f"{sizes[images.TRAINING]} training, "
                 f"{sizes[images.VALIDATION]} validation, "
                 f"{sizes[images.TESTING]} test"
                 + (f" ({len(data.filled.failures)} skipped)"
                    if data.filled.failures else "")),
      "classes": len(inputs.labels),
      "training": (f"{hparams.how_many_training_steps} steps, batch "
                   f"{hparams.train_batch_size}, learning rate "
                   f"{layer.regularization.chosen.learning_rate:g} "
                   f"({layer.regularization.schedule}), "
                   f"{layer.seconds:.1f} s"),
      "regularization": layer.regularization.describe().split(": ", 1)[1],
      "image folder": config.image_dir,
  }
  if evaluation.get("unknown"):
    unknown = evaluation["unknown"]
    facts["unknown class"] = (
        f"{unknown['label']}: {100 * unknown['test_rejected']:.1f}% of the "
        f"test photos answered so; threshold {unknown['threshold']:.4f} "
        f"({unknown['megabytes']:.1f} MB in each export)")
  for score in evaluation.get("models", []):
    facts[f"model {score['model']}"] = (
        f"held-out accuracy {100 * score['accuracy']:.1f}% (cross entropy "
        f"{score['cross_entropy']:.4f}, {score['scored_on']}), "
        f"{score['milliseconds']:.1f} ms/photo, {score['megabytes']:.1f} MB")
  curves = [report_html.curve_from_history("new softmax layer",
                                           layer.history)]
  if tuned is not None:
    result = tuned.result
    facts["fine-tuning"] = (
        f"{len(tuned.cut.layers)} layers, {result.steps_run} steps, "
        f"{tuned.seconds:.1f} s; validation accuracy "
        f"{result.baseline_validation_accuracy * 100:.1f}% -> "
        f"{result.best_validation_accuracy * 100:.1f}%; exported: "
        f"{'fine-tuned' if result.improved else 'stage 1 (not beaten)'}; "
        f"{tuned.params.schedule} rate from "
        f"{tuned.params.learning_rate:g}, "
        f"--fine_tune_pick={tuned.params.pick}")
    curves.append(report_html.curve_from_history("fine-tuning",
                                                 result.history))
  written.append(report_html.write_html(
      folder, evaluation, curves, facts,
      audit.to_json() if audit is not None and config.audit else None))
  return audited + written


def export_model(inputs: Inputs, data: Bottlenecks, final: FinalModel,
                 evaluation: Optional[Dict[str, object]], config: RunConfig,
                 hparams: HParams) -> List[str]:
  """Every format the flags ask for (retrain/deploy/exports.py); returns
  the paths written."""
  return exports.export_all(exports.Trained(
      final.fx, final.labels, final.weights, final.biases, final.template,
      final.test.paths, final.test.probabilities,
      [p for p in data.sets[images.TRAINING].paths
       if bottlenecks.AUGMENTED_MARK not in p], data.filled.failures,
      evaluation and evaluation["accuracy"], final.unknown), config,
      hparams.random_seed)


# ----------------------------------------------------------------- helpers --

def _unknown_photos(data: Bottlenecks, test_paths: Sequence[str],
                    config: RunConfig, hparams: HParams
                    ) -> Dict[str, List[str]]:
  """The photos the unknown class is made from: at most --unknown_keep
  original training photos (stratified), every validation photo, and the
  test photos predicted."""
  mark = bottlenecks.AUGMENTED_MARK
  training = data.sets[images.TRAINING]
  originals = [i for i, p in enumerate(training.paths) if mark not in p]
  keep = unknown_class.keep_rows(training.y[originals], config.unknown_keep,
                                 hparams.random_seed)
  return {"training": [training.paths[originals[i]] for i in keep],
          "validation": list(data.sets[images.VALIDATION].paths),
          "testing": list(test_paths)}


def _stages(layer: TrainedLayer,
            tuned: finetune.Stage) -> List[Dict[str, object]]:
  """Both stages' numbers for report.json."""
  def test_accuracy(probabilities):
    if not len(layer.test.truth):
      return None
    return float(np.mean(probabilities.argmax(1) == layer.test.truth))
  result = tuned.result
  last = layer.history[-1] if layer.history else None
  return [
      dict(stage="new softmax layer", steps=last.step if last else 0,
           seconds=layer.seconds,
           validation_accuracy=last.validation_accuracy if last else None,
           test_accuracy=test_accuracy(layer.test.probabilities)),
      dict(stage="fine-tuning", steps=result.steps_run,
           seconds=tuned.seconds, best_step=result.best_step,
           validation_accuracy_before=result.baseline_validation_accuracy,
           validation_accuracy=result.best_validation_accuracy,
           test_accuracy=test_accuracy(result.test_probabilities),
           exported=result.improved,
           learning_rate=tuned.params.learning_rate,
           schedule=tuned.params.schedule, pick=tuned.params.pick,
           weight_decay=tuned.params.weight_decay,
           trainable=tuned.cut.trainable(), parameters=tuned.parameters,
           cut=list(tuned.cut.inputs)),
  ]


def _image_summary(tag: str, image: np.ndarray) -> tf1.Summary:
  """A TensorBoard image summary of a uint8 [h, w, 3] array."""
  png = tf.io.encode_png(image).numpy()
  return tf1.Summary(value=[tf1.Summary.Value(
      tag=tag, image=tf1.Summary.Image(
          encoded_image_string=png, height=image.shape[0],
          width=image.shape[1], colorspace=3))])


def _in_background(fn: Callable, *args) -> concurrent.futures.Future:
  """fn(*args) started on a daemon thread; its result or error as a Future."""
  future: concurrent.futures.Future = concurrent.futures.Future()

  def work() -> None:
    try:
      future.set_result(fn(*args))
    except BaseException as e:  # pylint: disable=broad-except
      future.set_exception(e)
  threading.Thread(target=work, daemon=True).start()
  return future
