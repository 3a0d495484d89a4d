"""Flag values checked before anything is logged or written.

Bad input gives one line (a UserError) and no files: every value that cannot
work, and every output folder that cannot be written, is caught here.
"""

import os
import re
import tempfile
import uuid

from cache import fs
from retrain.config import HParams, RunConfig
from retrain.deploy import export, onnx_model, tfjs
from retrain.errors import UserError
from retrain.features import storage
from retrain.training import finetune, schedules, train


def check_config(config: RunConfig, hparams: HParams) -> None:
  """Raises UserError for a flag value that cannot work. Writes nothing
  (locally; on a remote filesystem, a hidden probe file is written and
  removed to learn that the output folders can be written)."""
  try:
    _check_config(config, hparams)
  except fs.StorageError as e:  # A remote folder that cannot be reached.
    raise UserError(str(e)) from None


def _check_unknown(config: RunConfig) -> None:
  """The --unknown_* flags (the label against the classes: load_inputs)."""
  given = [f for f in ("unknown_dir", "unknown_reject")
           if getattr(config, f)]
  if not config.unknown_label:
    if given:
      raise UserError(f"--{given[0]} is used with --unknown_label; pass "
                      "--unknown_label=unknown too")
    return
  label = config.unknown_label
  if label != label.strip() or "\n" in label or "\r" in label:
    raise UserError(f"--unknown_label={label!r}: no leading or trailing "
                    "spaces or line breaks (it is a line of the labels "
                    "file)")
  if not 0 < config.unknown_accept < 1:
    raise UserError(f"--unknown_accept={config.unknown_accept:g}: must be "
                    "above 0 and below 1 (the share of known validation "
                    "photos still answered with a known class)")
  if config.unknown_keep < 5:
    raise UserError(f"--unknown_keep={config.unknown_keep}: must be at "
                    "least 5 (the distance is to the 5th nearest kept "
                    "training photo)")
  if not 0 <= config.unknown_reject < 1:
    raise UserError(f"--unknown_reject={config.unknown_reject:g}: must be "
                    "from 0 (off) to below 1 (the share of --unknown_dir "
                    "photos answered unknown)")
  if config.unknown_reject and not config.unknown_dir:
    raise UserError("--unknown_reject sets the threshold on --unknown_dir "
                    "photos; pass --unknown_dir too")
  if config.unknown_dir and not fs.isdir(config.unknown_dir):
    raise UserError(f"--unknown_dir={config.unknown_dir}: no such folder; "
                    "pass a folder of photos of none of the classes")


def _check_config(config: RunConfig, hparams: HParams) -> None:
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
  need(config.dedupe in ("none", "group"),
       f"--dedupe={config.dedupe}: must be none or group")
  if config.exclude_from_training:
    need(fs.isfile(config.exclude_from_training),
         f"--exclude_from_training={config.exclude_from_training}: no such "
         "file; pass the audit.json a run wrote beside its report.json")
  _check_unknown(config)
  for flag in ("validation_batch_size", "test_batch_size"):
    value = getattr(hparams, flag)
    need(value > 0 or value == -1,
         f"--{flag}={value}: must be positive, or -1 for the whole set")
  need(config.bottleneck_batch_size is None or
       config.bottleneck_batch_size > 0,
       f"--bottleneck_batch_size={config.bottleneck_batch_size}: must be "
       "positive")
  _check_beam(config)
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
    need(not fs.isdir(path),
         f"--{flag}={path} is a folder; pass a file path")
    _check_writable(flag, fs.dirname(fs.abspath(path)))
  folders = [("bottleneck_dir", config.bottleneck_dir)]
  if config.summaries_dir:
    folders.append(("summaries_dir", config.summaries_dir))
  if config.intermediate_store_frequency:
    folders.append(("intermediate_output_graphs_dir",
                    config.intermediate_output_graphs_dir))
  if config.checkpoint_path:
    folders.append(("checkpoint_path",
                    fs.dirname(fs.abspath(config.checkpoint_path))))
  for flag, folder in folders:
    need(bool(folder), f"--{flag} must not be empty")
    _check_writable(flag, folder)
  for flag in ("fine_tune_layers", "fine_tune_steps", "fine_tune_patience"):
    value = getattr(hparams, flag)
    need(value >= 0, f"--{flag}={value}: must be 0 or more")
  need(not (hparams.fine_tune_layers and hparams.fine_tune_from),
       "--fine_tune_layers and --fine_tune_from both given; pass one")
  need(hparams.fine_tune_learning_rate >= 0,
       f"--fine_tune_learning_rate={hparams.fine_tune_learning_rate}: must "
       "be positive (or 0: --learning_rate / 10)")
  need(0 <= hparams.fine_tune_momentum < 1,
       f"--fine_tune_momentum={hparams.fine_tune_momentum}: must be from 0 "
       "to below 1")
  need(hparams.fine_tune_weight_decay >= 0 or
       hparams.fine_tune_weight_decay == -1,
       f"--fine_tune_weight_decay={hparams.fine_tune_weight_decay}: must be "
       "0 or more (or -1: stage 1's)")
  for flag, values in (("fine_tune_schedule", finetune.SCHEDULES),
                       ("fine_tune_pick", finetune.PICKS)):
    value = getattr(hparams, flag)
    need(value in values,
         f"--{flag}={value}: must be one of {', '.join(values)}")
  need(hparams.fine_tune_batch_size > 0,
       f"--fine_tune_batch_size={hparams.fine_tune_batch_size}: must be a "
       "positive number")
  need(hparams.weight_decay == -1 or hparams.weight_decay >= 0,
       f"--weight_decay={hparams.weight_decay:g}: must be 0 or more (or -1: "
       "chosen on the validation images)")
  need(hparams.label_smoothing == -1 or 0 <= hparams.label_smoothing < 1,
       f"--label_smoothing={hparams.label_smoothing:g}: must be from 0 to "
       "below 1 (or -1: chosen on the validation images)")
  need(hparams.learning_rate_schedule in schedules.CHOICES,
       f"--learning_rate_schedule={hparams.learning_rate_schedule}: must be "
       f"one of {', '.join(schedules.CHOICES)}")
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
  need(config.tflite_input in export.TFLITE_INPUTS,
       f"--tflite_input={config.tflite_input}: must be one of "
       f"{', '.join(export.TFLITE_INPUTS)}")
  need(config.tflite_input == "image" or bool(config.tflite_output),
       f"--tflite_input={config.tflite_input} needs --tflite_output="
       "PATH.tflite")
  need(config.tfjs_quantize in tfjs.QUANTIZATIONS,
       f"--tfjs_quantize={config.tfjs_quantize}: must be one of "
       f"{', '.join(tfjs.QUANTIZATIONS)}")
  need(config.tfjs_quantize == "none" or bool(config.tfjs_output),
       f"--tfjs_quantize={config.tfjs_quantize} needs --tfjs_output=FOLDER")
  if config.tfjs_output:
    need(not fs.isfile(config.tfjs_output),
         f"--tfjs_output={config.tfjs_output} is a file; pass a folder")
    _check_writable("tfjs_output",
                    fs.dirname(fs.abspath(config.tfjs_output.rstrip("/"))))
  need(config.tflite_quantize == "none" or bool(config.tflite_output),
       f"--tflite_quantize={config.tflite_quantize} needs --tflite_output="
       "PATH.tflite")
  if config.tflite_output:
    need(not fs.isdir(config.tflite_output),
         f"--tflite_output={config.tflite_output} is a folder; pass a file "
         "path")
    _check_writable("tflite_output",
                    fs.dirname(fs.abspath(config.tflite_output)))
  if config.onnx_output:
    need(not fs.isdir(config.onnx_output),
         f"--onnx_output={config.onnx_output} is a folder; pass a file path "
         "(model.onnx)")
    onnx_model.require()
    _check_writable("onnx_output",
                    fs.dirname(fs.abspath(config.onnx_output)))
  if config.saved_model_dir:
    d = config.saved_model_dir
    need(not fs.isfile(d), f"--saved_model_dir={d} is a file; pass a "
         "folder path")
    need(not fs.isdir(d) or not fs.listdir(d) or
         export.is_saved_model_dir(d),
         f"--saved_model_dir={d} exists and holds something other than a "
         "SavedModel; pass a new or empty folder")
    _check_writable("saved_model_dir", fs.dirname(fs.abspath(d)))


def _check_writable(flag: str, folder: str) -> None:
  """The folder, or its nearest existing ancestor, must be a writable folder.
  On a remote filesystem: a hidden probe file can be written there."""
  if fs.has_scheme(folder):
    probe = fs.join(folder, f".retrain-write-probe-{uuid.uuid4().hex}")
    try:
      fs.write_atomic(probe, b"")
      fs.for_path(probe).remove(probe)
    except fs.StorageError as e:
      raise storage.user_error(flag, folder, e) from None
    return
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


# --beam_runner values: Beam's runner names (listed here so that checking
# them does not import Beam).
BEAM_RUNNERS = ("DirectRunner", "DaskRunner", "DataflowRunner", "FlinkRunner",
                "SparkRunner", "PortableRunner", "PrismRunner")


def _check_beam(config: RunConfig) -> None:
  """--beam_runner names a runner and Beam is installed; --beam_options
  parses. Does not import Beam."""
  if not config.beam_runner:
    if config.beam_options:
      raise UserError("--beam_options is given without --beam_runner; pass "
                      "--beam_runner=DirectRunner (or another runner)")
    return
  if config.beam_runner not in BEAM_RUNNERS:
    raise UserError(f"--beam_runner={config.beam_runner}: not a runner "
                    f"retrain knows; use one of {', '.join(BEAM_RUNNERS)}")
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("apache_beam") is None:  # Not imported yet.
    raise UserError(f"--beam_runner={config.beam_runner} needs Apache Beam: "
                    "pip install 'retrain[beam]' (and 'retrain[gcp]' for "
                    "Dataflow)")
  if (config.beam_runner == "DaskRunner" and
      importlib.util.find_spec("distributed") is None):
    raise UserError("--beam_runner=DaskRunner needs Dask's distributed "
                    "scheduler: pip install 'retrain[dask]'")
  import shlex  # pylint: disable=g-import-not-at-top
  try:
    shlex.split(config.beam_options)
  except ValueError as e:
    raise UserError(f"--beam_options={config.beam_options!r}: cannot be "
                    f"split into options ({e})") from None
