"""The whole job, step by step: files -> split -> bottlenecks -> training -> export.

`run` is the library entry point; `python -m retrain` parses flags into the
config tuples and calls it.
"""

import concurrent.futures
import dataclasses
import datetime
import hashlib
import os
import re
import tempfile
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

import cache
from retrain import export, images, report, train
from retrain.config import HParams, ModelOptions, RunConfig
from retrain.errors import UserError
from retrain.progress import Progress
from retrain.extract import BottleneckExtractor, ImageDecoder
from retrain.model import FeatureExtractor, load_feature_extractor

tf1 = tf.compat.v1

# Marks augmented copies in training set paths: "<image path>#augmented<k>".
AUGMENTED_MARK = "#augmented"

# Training images used to calibrate int8 TFLite quantization.
TFLITE_CALIBRATION_IMAGES = 200


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


def check_config(config: RunConfig, hparams: HParams) -> None:
  """Raises UserError for a flag value that cannot work. Writes nothing."""
  def need(ok: bool, message: str) -> None:
    if not ok:
      raise UserError(message)
  for flag in ("testing_percentage", "validation_percentage"):
    value = getattr(config, flag)
    need(0 <= value < 100, f"--{flag}={value}: must be from 0 to 99")
  total = config.testing_percentage + config.validation_percentage
  need(total < 100, f"--testing_percentage plus --validation_percentage is "
       f"{total}; must be below 100 so that images are left for training")
  for flag in ("how_many_training_steps", "train_batch_size",
               "eval_step_interval"):
    value = getattr(hparams, flag)
    need(value > 0, f"--{flag}={value}: must be a positive number")
  need(hparams.learning_rate > 0,
       f"--learning_rate={hparams.learning_rate}: must be positive")
  for flag in ("validation_batch_size", "test_batch_size"):
    value = getattr(hparams, flag)
    need(value > 0 or value == -1,
         f"--{flag}={value}: must be positive, or -1 for the whole set")
  need(config.bottleneck_batch_size > 0,
       f"--bottleneck_batch_size={config.bottleneck_batch_size}: must be "
       "positive")
  need(config.max_in_memory_mb >= 0,
       f"--max_in_memory_mb={config.max_in_memory_mb}: must be 0 (auto) or "
       "positive")
  need(config.intermediate_store_frequency >= 0,
       f"--intermediate_store_frequency={config.intermediate_store_frequency}"
       ": must be 0 (off) or positive")
  need(bool(re.fullmatch(r"[A-Za-z0-9.][A-Za-z0-9_.\-/]*",
                         config.final_tensor_name)),
       f"--final_tensor_name={config.final_tensor_name!r}: not a valid "
       "TensorFlow op name (letters, digits, '_', '.', '-', '/')")
  for flag in ("output_graph", "output_labels"):
    path = getattr(config, flag)
    need(bool(path), f"--{flag} must not be empty")
    need(not os.path.isdir(path),
         f"--{flag}={path} is a folder; pass a file path")
    _check_writable(flag, os.path.dirname(os.path.abspath(path)))
  folders = [("bottleneck_dir", config.bottleneck_dir)]
  if config.summaries_dir:
    folders.append(("summaries_dir", config.summaries_dir))
  if config.intermediate_store_frequency:
    folders.append(("intermediate_output_graphs_dir",
                    config.intermediate_output_graphs_dir))
  if config.checkpoint_path:
    folders.append(("checkpoint_path",
                    os.path.dirname(os.path.abspath(config.checkpoint_path))))
  for flag, folder in folders:
    need(bool(folder), f"--{flag} must not be empty")
    _check_writable(flag, folder)
  need(hparams.class_sampling in train.SAMPLERS,
       f"--class_sampling={hparams.class_sampling}: must be one of "
       f"{', '.join(train.SAMPLERS)}")
  for flag, top in (("random_crop", 100), ("random_scale", 100),
                    ("random_brightness", 99)):
    value = getattr(config, flag)
    need(0 <= value <= top, f"--{flag}={value}: must be a percentage from 0 "
         f"to {top}")
  need(config.augmentation_copies >= 0,
       f"--augmentation_copies={config.augmentation_copies}: must be 0 or "
       "more")
  need(not config.augmentation_copies or config.distortions().any(),
       f"--augmentation_copies={config.augmentation_copies} needs a "
       "distortion: --flip_left_right, --random_crop, --random_scale or "
       "--random_brightness")
  need(config.tflite_quantize in export.TFLITE_QUANTIZATIONS,
       f"--tflite_quantize={config.tflite_quantize}: must be one of "
       f"{', '.join(export.TFLITE_QUANTIZATIONS)}")
  need(config.tflite_quantize == "none" or bool(config.tflite_output),
       f"--tflite_quantize={config.tflite_quantize} needs --tflite_output="
       "PATH.tflite")
  if config.tflite_output:
    need(not os.path.isdir(config.tflite_output),
         f"--tflite_output={config.tflite_output} is a folder; pass a file "
         "path")
    _check_writable("tflite_output",
                    os.path.dirname(os.path.abspath(config.tflite_output)))
  if config.saved_model_dir:
    d = config.saved_model_dir
    need(not os.path.isfile(d), f"--saved_model_dir={d} is a file; pass a "
         "folder path")
    need(not os.path.isdir(d) or not os.listdir(d) or
         export.is_saved_model_dir(d),
         f"--saved_model_dir={d} exists and holds something other than a "
         "SavedModel; pass a new or empty folder")
    _check_writable("saved_model_dir", os.path.dirname(os.path.abspath(d)))


def _check_writable(flag: str, folder: str) -> None:
  """The folder, or its nearest existing ancestor, must be a writable folder."""
  probe = os.path.abspath(folder)
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise UserError(f"--{flag}: {probe} is a file, so {folder} cannot be "
                    "created; choose another path")
  try:  # A real probe: access() says yes to root even on read-only mounts.
    with tempfile.TemporaryFile(dir=probe):
      pass
  except OSError:
    raise UserError(f"--{flag}: cannot write in {probe}; choose a folder you "
                    "can write to")


def _fill(store: cache.BottleneckCache, refs: Sequence[cache.ImageRef],
          dim: int, what: str,
          make_extractor: Callable[[], BottleneckExtractor]
          ) -> cache.FillResult:
  """store.fill with a lazily built extractor and a progress report."""
  extractors: List[BottleneckExtractor] = []
  progress: List[Progress] = []

  def compute(missing):
    if not missing:
      return iter(())
    progress.append(Progress(
        f"{what} ({len(refs) - len(missing)} cached, {len(missing)} new)",
        len(missing)))
    extractors.append(make_extractor())
    return extractors[0].compute(missing)

  try:
    return store.fill(refs, compute, dim,
                      lambda done, total: progress[0].update(done))
  finally:
    for e in extractors:
      e.close()
    for p in progress:
      p.close()


def compute_bottlenecks(image_lists: images.ImageLists, fx: FeatureExtractor,
                        config: RunConfig, random_seed: int = 0
                        ) -> Tuple[Dict[str, train.LabeledBottlenecks],
                                   cache.FillResult, int]:
  """The bottlenecks of every image, by set, from the cache or computed.

  With augmentation, the training set also holds `config.copies()` distorted
  copies of every training image, each cached under its own model tag.
  Returns (sets, fill result of the originals, augmented vectors computed).
  """
  refs, truth, category = [], [], []
  for class_index, class_images in enumerate(image_lists.classes):
    for cat in images.CATEGORIES:
      for rel in class_images.images(cat):
        refs.append(cache.ImageRef(image_lists.path(class_images, rel),
                                   class_images.dir_name, rel))
        truth.append(class_index)
        category.append(cat)
  result = _fill(cache.BottleneckCache(config.bottleneck_dir, fx.tag), refs,
                 fx.bottleneck_size, "Bottlenecks", lambda: BottleneckExtractor(
                     fx, config.bottleneck_batch_size))
  truth = np.array(truth, np.int64)
  category = np.array(category)
  copies = config.copies()
  # The sets refer to rows of the memory-mapped index: nothing is loaded
  # yet (see keep_in_memory).
  sets = {}
  for cat in images.CATEGORIES:
    keep = (category == cat) & result.ok
    rows = np.flatnonzero(keep)
    sets[cat] = train.LabeledBottlenecks(
        result.vectors, truth[keep], [refs[i].path for i in rows], rows)
  augmented = 0
  if copies:
    distortions = config.distortions()
    train_keep = (category == images.TRAINING) & result.ok
    train_refs = [r for r, k in zip(refs, train_keep) if k]
    xs, ys, paths = [sets[images.TRAINING].in_memory().x], [
        truth[train_keep]], list(sets[images.TRAINING].paths)
    for copy in range(1, copies + 1):
      tag = augmented_tag(fx.tag, distortions, random_seed, copy)
      filled = _fill(cache.BottleneckCache(config.bottleneck_dir, tag),
                     train_refs, fx.bottleneck_size,
                     f"Augmented copy {copy}/{copies}",
                     lambda copy=copy: BottleneckExtractor(
                         fx, config.bottleneck_batch_size,
                         distortions=distortions, copy=copy,
                         random_seed=random_seed))
      augmented += filled.computed
      xs.append(filled.vectors[filled.ok])
      ys.append(truth[train_keep][filled.ok])
      paths += [f"{r.path}{AUGMENTED_MARK}{copy}"
                for r, k in zip(train_refs, filled.ok) if k]
    sets[images.TRAINING] = train.LabeledBottlenecks(
        np.concatenate(xs), np.concatenate(ys), paths)
    logging.info("Augmentation: %d distorted copies of %d training images "
                 "(%s), %d computed, the rest from cache", copies,
                 len(train_refs), distortions, augmented)
  return sets, result, augmented


def keep_in_memory(sets: Dict[str, train.LabeledBottlenecks],
                   config: RunConfig) -> Dict[str, train.LabeledBottlenecks]:
  """The sets loaded into memory, unless larger than the memory budget; then
  training reads them where needed from the memory-mapped cache index."""
  size = sum(len(s) * s.x.shape[1] * 4 for s in sets.values()
             if s.rows is not None)
  if size <= in_memory_limit(config):
    return {cat: s.in_memory() for cat, s in sets.items()}
  logging.info("Bottlenecks (%.0f MB) exceed --max_in_memory_mb; training "
               "reads them from the memory-mapped cache index", size / 2**20)
  return sets


def in_memory_limit(config: RunConfig) -> int:  # bytes
  """Bytes of bottlenecks held in memory before training reads them from
  disk: --max_in_memory_mb, or by default a quarter of physical memory."""
  if config.max_in_memory_mb > 0:
    return int(config.max_in_memory_mb * 2**20)
  try:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
  except (ValueError, OSError, AttributeError):
    return 2 * 2**30


def augmented_tag(tag: str, distortions, random_seed: int, copy: int) -> str:
  """The cache tag of augmented copy `copy`: model + distortions + seed."""
  digest = hashlib.sha1(repr((tuple(distortions), random_seed)).encode()
                        ).hexdigest()[:8]
  return f"{tag}.aug{copy}-{digest}"


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


def _intermediate_exporter(config: RunConfig,
                           template: concurrent.futures.Future,
                           tg: train.TrainingGraph, session: tf1.Session,
                           metadata: Dict[str, object],
                           written: List[str]) -> Callable[[int], None]:
  def store(step: int) -> None:
    weights, biases = train.final_layer(tg, session)
    graph_def = export.fill_final_layer(template.result(), weights, biases)
    path = os.path.join(config.intermediate_output_graphs_dir,
                        f"intermediate_{step}.pb")
    export.write_frozen_graph(path, graph_def, dict(metadata, step=step))
    written.append(path)
    logging.info("Saved intermediate graph %s", path)
  return store


def _export_tflite(config: RunConfig, fx: FeatureExtractor,
                   labels: Sequence[str], weights: np.ndarray,
                   biases: np.ndarray, train_paths: Sequence[str], seed: int,
                   common: Dict[str, object]) -> List[str]:
  """Writes the TFLite model (and its labels and JSON); returns the paths."""
  representative = None
  if config.tflite_quantize == "int8":
    rng = np.random.default_rng(seed + 2)
    pick = rng.permutation(len(train_paths))[:TFLITE_CALIBRATION_IMAGES]
    decoder = ImageDecoder(fx.input_size, rule=fx.preprocessing)
    try:
      decoded = [decoder.decode(train_paths[i])[0] for i in pick]
    finally:
      decoder.close()
    representative = np.stack([d for d in decoded if d is not None])
    logging.info("Calibrating int8 TFLite on %d training images",
                 len(representative))
  flatbuffer = export.tflite_model(fx, weights, biases,
                                   config.tflite_quantize, representative,
                                   config.final_tensor_name)
  export.write_tflite(config.tflite_output, flatbuffer, labels, dict(
      common, **export.tflite_io_description(fx, config.tflite_quantize,
                                             config.final_tensor_name)))
  stem = os.path.splitext(config.tflite_output)[0]
  return [config.tflite_output, stem + ".labels.txt", stem + ".json"]


def run(config: RunConfig, hparams: HParams = HParams(),
        model_options: ModelOptions = ModelOptions()) -> RunResult:
  """Retrains and exports. Raises UserError for bad input, before writing."""
  # Everything that can be wrong with the input is checked before anything
  # is logged or written, so bad input gives one line and no files.
  check_config(config, hparams)
  image_lists = images.list_images(config.image_dir, config.testing_percentage,
                                   config.validation_percentage)
  fx = load_feature_extractor(model_options, config.bottleneck_dir)
  for warning in image_lists.warnings:
    logging.warning("%s", warning)
  labels = image_lists.labels
  logging.info("%d classes: %s", len(labels), ", ".join(labels))
  logging.info("Model %s: input %s %dx%d, bottleneck %s (%d-d)", fx.source,
               fx.input_tensor, *fx.input_size, fx.bottleneck_tensor,
               fx.bottleneck_size)

  sets, filled, augmented = compute_bottlenecks(image_lists, fx, config,
                                                hparams.random_seed)
  logging.info("Bottlenecks: %d from cache, %d computed, %d skipped",
               filled.from_cache, filled.computed, len(filled.failures))
  for path, reason in filled.failures:
    logging.warning("Skipped %s: %s", path, reason)
  sizes = {cat: len(s) for cat, s in sets.items()}
  logging.info("Images: %d training, %d validation, %d testing",
               sizes[images.TRAINING], sizes[images.VALIDATION],
               sizes[images.TESTING])
  sets = keep_in_memory(sets, config)
  train_set = sets[images.TRAINING]
  present = set(train_set.y.tolist())
  if len(present) < 2:
    raise UserError(f"--image_dir={config.image_dir}: fewer than 2 classes "
                    "have a usable training image; add images")
  for index, label in enumerate(labels):
    if index not in present:
      logging.warning("class %r has no usable training image; it will never "
                      "be predicted", label)

  common = dict(classes=len(labels), model=fx.describe(),
                input_size=list(fx.input_size))
  metadata = dict(common, labels=os.path.abspath(config.output_labels),
                  **export.io_description(fx, config.final_tensor_name))
  outputs: List[str] = []
  # The export graph does not depend on the weights: build and optimize it
  # while training runs (session.run releases the GIL).
  template = _in_background(export.cached_inference_graph_template, fx,
                            config.final_tensor_name, config.bottleneck_dir)
  tg = train.build_training_graph(fx.bottleneck_size, len(labels), hparams,
                                  config.final_tensor_name)
  writers = []
  if config.summaries_dir:
    run_name = datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S-") + str(
        os.getpid())
    run_dir = os.path.join(config.summaries_dir, run_name)
    with tg.graph.as_default():
      writers = [tf1.summary.FileWriter(os.path.join(run_dir, "train"),
                                        tg.graph),
                 tf1.summary.FileWriter(os.path.join(run_dir, "validation"))]
    logging.info("TensorBoard summaries in %s", run_dir)
  steps = hparams.how_many_training_steps
  progress = Progress("Training", steps, log_every=0)

  def log_eval(step: int, text: str) -> None:
    if progress.tty:
      progress.update(step, text)
    else:
      logging.info("Step %d/%d: %s", step, steps, text)

  with tf1.Session(graph=tg.graph) as session:
    try:
      history = train.train(
          tg, session, train_set, sets[images.VALIDATION], len(labels),
          hparams, log=log_eval,
          train_writer=writers[0] if writers else None,
          validation_writer=writers[1] if writers else None,
          on_interval=_intermediate_exporter(config, template, tg, session,
                                             metadata, outputs),
          store_every=config.intermediate_store_frequency)
    except BaseException:
      for w in writers:
        w.close()
      raise
    finally:
      progress.close()
    if config.checkpoint_path:
      tg.saver.save(session, config.checkpoint_path, write_meta_graph=False,
                    write_state=False)
    test_set = sets[images.TESTING]
    rng = np.random.default_rng(hparams.random_seed + 1)
    pick = train.sample_subset(len(test_set), hparams.test_batch_size, rng)
    test_x, test_y = test_set.take(pick), test_set.y[pick]
    test_paths = [test_set.paths[i] for i in pick]
    probabilities = train.predict(tg, session, test_x)
    weights, biases = train.final_layer(tg, session)

  test_accuracy = None
  evaluation = None
  if len(test_y):
    evaluation = report.classification_report(
        test_y, probabilities.argmax(1), labels, test_paths, probabilities)
    test_accuracy = evaluation["accuracy"]
    logging.info("Final test accuracy = %.1f%% (N=%d)", test_accuracy * 100,
                 len(test_y))
    text = report.format_report(evaluation)
    per_class = text.split("\nConfusion")[0].split("\n", 2)[2]
    logging.info("Per class:\n%s", per_class.rstrip())
    if config.print_misclassified_test_images:
      logging.info("=== MISCLASSIFIED TEST IMAGES ===")
      for row in evaluation["misclassified"]:
        logging.info("%s: true %s, predicted %s (%.3f)", row["image"],
                     row["true"], row["predicted"], row["probability"])
    if writers:
      writers[1].add_summary(_image_summary(
          "test_confusion_matrix",
          report.confusion_image(evaluation["confusion_matrix"])), steps)
    outputs += report.write_reports(
        os.path.dirname(os.path.abspath(config.output_graph)), evaluation)
  else:
    logging.warning("No test images: the test accuracy is not measured "
                    "(raise --testing_percentage)")
  for w in writers:
    w.close()

  results = dict(test_accuracy=test_accuracy, test_images=len(test_y),
                 skipped_images=len(filled.failures))
  common.update(results)
  metadata.update(results)
  graph_def = export.fill_final_layer(template.result(), weights, biases)
  export.write_frozen_graph(config.output_graph, graph_def, metadata)
  export.write_labels(config.output_labels, labels)
  skipped_path = os.path.splitext(config.output_graph)[0] + ".skipped.txt"
  cache.atomic_write_text(skipped_path, "".join(
      f"{p}\t{r}\n" for p, r in filled.failures))
  outputs += [config.output_graph, export.metadata_path(config.output_graph),
              config.output_labels, skipped_path]
  if config.saved_model_dir:
    export.write_saved_model(
        config.saved_model_dir, graph_def, labels, config.final_tensor_name,
        dict(common, resize=metadata["resize"],
             input_scaling=metadata["input_scaling"]))
    outputs.append(config.saved_model_dir)
  if config.tflite_output:
    originals = [p for p in train_set.paths if AUGMENTED_MARK not in p]
    outputs += _export_tflite(config, fx, labels, weights, biases,
                              originals, hparams.random_seed,
                              dict(common, resize=metadata["resize"],
                                   input_scaling=metadata["input_scaling"]))
  for path in outputs:
    logging.info("Wrote %s", path)
  return RunResult(labels, test_accuracy, test_paths, test_y, probabilities,
                   history, filled.failures, filled.from_cache,
                   filled.computed, sizes, outputs, fx.describe(), weights,
                   biases, evaluation, augmented)
