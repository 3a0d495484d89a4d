"""Every command-line flag of `python -m retrain`, grouped, with help text.

The defaults come from the config tuples, so the library and the command line
agree. `to_config` turns parsed flags into those tuples; nothing else reads
FLAGS.
"""

from typing import List, Optional, Tuple, Union

from absl import flags

from retrain import cli
from retrain.config import HParams, ModelOptions, RunConfig
from retrain.errors import UserError

_H = HParams()
_M = ModelOptions()
_R = RunConfig(image_dir="")

# The flags by what a user is doing, in the order they meet it: --help
# prints them by these groups, and README.md's "Flags" tables follow them
# (tests/test_cli.py checks both).
GROUPS = cli.FlagGroups()

GROUPS.group("The photos and their split")
flags.DEFINE_string("image_dir", "", "Folder with one sub-folder of images per "
                    "class (JPEG, PNG, GIF, BMP, WebP).")
flags.DEFINE_integer("testing_percentage", _R.testing_percentage,
                     "Percentage of images in the test set.")
flags.DEFINE_integer("validation_percentage", _R.validation_percentage,
                     "Percentage of images in the validation set.")

GROUPS.group("The pretrained model")
flags.DEFINE_string("tfhub_module", _M.tfhub_module,
                    "TF-Hub image feature vector module: a URL (downloaded "
                    "and cached by tensorflow_hub; TFHUB_CACHE_DIR is "
                    "honoured) or a local SavedModel folder. Several, "
                    "comma-separated: one classifier on all of them.")
flags.DEFINE_string("graph", _M.graph, "Frozen GraphDef (.pb) of a "
                    "pretrained CNN, instead of --tfhub_module. Several, "
                    "comma-separated (with --tfhub_module too: the graphs, "
                    "then the modules): one classifier on all of them.")
flags.DEFINE_string("architecture", None, "The classic tool's model names: "
                    "inception_v3 or mobilenet_<1.0|0.75|0.50|0.25>_"
                    "<224|192|160|128>[_quantized], found in --model_dir (the "
                    ".tgz or what it extracts to) or downloaded there. "
                    "Instead of --graph/--tfhub_module.")
flags.DEFINE_string("model_dir", _M.model_dir, "Where --architecture models "
                    "are kept, as the classic tool kept them. Given alone "
                    "(no model flag), it means --architecture=inception_v3.")
flags.DEFINE_string("input_tensor", None, "--graph: its float image input "
                    "tensor (default: recognised for Inception-v3 and "
                    "MobileNet v1 graphs). With several models: one value "
                    "for every graph, or one per model, comma-separated, in "
                    "model order (empty: recognised).")
flags.DEFINE_string("bottleneck_tensor", None, "--graph: its bottleneck "
                    "(penultimate feature) tensor (default: recognised). "
                    "Several models: as --input_tensor.")
flags.DEFINE_string("input_size", None, "Model input size HEIGHT,WIDTH (or "
                    "one number for square), when the model does not tell. "
                    "Several models: one per model, comma-separated, each N "
                    "or HxW.")
flags.DEFINE_string("input_mean", None, "The model takes (pixel - input_mean)"
                    " / input_std, pixels in [0, 255] (default: recognised "
                    "graphs; 0 for TF-Hub modules). Several models: one "
                    "value for all, or one per model, comma-separated.")
flags.DEFINE_string("input_std", None, "See --input_mean (default: "
                    "recognised graphs; 255 for TF-Hub modules).")
flags.DEFINE_bool("allow_unsafe_graph_ops", _M.allow_unsafe_graph_ops,
                  "Import a model even if its graph has ops that read or "
                  "write files or run code (see retrain/safety.py). Only for "
                  "models you trust.")
flags.DEFINE_enum("preprocessing", _M.preprocessing, ["fast", "exact"],
                  "How images are decoded and resized to the model's input. "
                  "fast: large JPEGs are decoded at 1/2, 1/4 or 1/8 scale "
                  "(never below the input size) and the resize is "
                  "antialiased only when it shrinks by more than 2x. exact: "
                  "full-size decode, always antialiased (slower). Exports "
                  "use the same rule; changing it recomputes bottlenecks.")

GROUPS.group("Training the new layer (and the regularization search)")
flags.DEFINE_integer("how_many_training_steps", _H.how_many_training_steps,
                     "How many training steps to run.")
flags.DEFINE_float("learning_rate", _H.learning_rate,
                   "Learning rate of gradient descent (with "
                   "--weight_decay=-1: 10 times it where SGD is stable at "
                   "the chosen optimum).")
flags.DEFINE_integer("train_batch_size", _H.train_batch_size,
                     "Bottlenecks per training step.")
flags.DEFINE_integer("validation_batch_size", _H.validation_batch_size,
                     "Validation images per evaluation (-1: all).")
flags.DEFINE_integer("test_batch_size", _H.test_batch_size,
                     "Test images for the final accuracy (-1: all).")
flags.DEFINE_integer("eval_step_interval", _H.eval_step_interval,
                     "Evaluate every this many steps.")
flags.DEFINE_integer("random_seed", _H.random_seed, "Seed of weight "
                     "initialisation and batch sampling: the same seed and "
                     "data give the same numbers.")
flags.DEFINE_enum("class_sampling", _H.class_sampling,
                  ["balanced", "proportional"],
                  "How training batches are drawn: balanced (a class "
                  "uniformly, then one of its images; the classic tool's "
                  "rule) or proportional (images uniformly).")
flags.DEFINE_float("weight_decay", _H.weight_decay,
                   "L2 penalty on the new layer's weights (the loss adds "
                   "weight_decay / 2 * |W|^2 to the mean cross entropy). "
                   "-1: chosen among 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1 by "
                   "held-out cross entropy of each decay's optimal layer "
                   "(cross-validation below 1000 validation images, an "
                   "image and its augmented copies in one fold), the "
                   "learning rate then 1 or 10 x --learning_rate, the "
                   "largest stable at that optimum. 0 or more: that decay "
                   "at exactly --learning_rate; 0: the classic tool's "
                   "training.")
flags.DEFINE_enum("learning_rate_schedule", _H.learning_rate_schedule,
                  ["auto", "cosine", "constant"],
                  "The new layer's learning rate along the training steps: "
                  "cosine (from --learning_rate down to nearly 0) or "
                  "constant (the classic tool's). auto: cosine with "
                  "--weight_decay=-1 (the search chooses the rate and "
                  "tries each setting on this schedule), constant when "
                  "--weight_decay is given.")
flags.DEFINE_float("label_smoothing", _H.label_smoothing,
                   "Train the new layer on labels smoothed to 1 - s on the "
                   "class and s / classes on each class. -1: chosen among 0 "
                   "and 0.1 by held-out cross entropy (with --weight_decay, "
                   "in one search).")

GROUPS.group("Augmentation (distorted copies of the training photos)")
flags.DEFINE_bool("flip_left_right", _R.flip_left_right,
                  "Distort training images by mirroring half of them.")
flags.DEFINE_integer("random_crop", _R.random_crop,
                     "Distort by cropping away up to this percent margin.")
flags.DEFINE_integer("random_scale", _R.random_scale,
                     "Distort by enlarging up to this percent.")
flags.DEFINE_integer("random_brightness", _R.random_brightness,
                     "Distort by scaling brightness by up to +- this "
                     "percent.")
flags.DEFINE_integer("augmentation_copies", _R.augmentation_copies,
                     "Distorted copies of each training image, each with "
                     "its own cached bottleneck (0: 5 when a distortion flag "
                     "is set, else none).")

GROUPS.group("Fine-tuning the top of the CNN (stage 2)")
flags.DEFINE_integer("fine_tune_layers", _H.fine_tune_layers,
                     "After training the new layer, also train the last N "
                     "weight layers of the CNN below the bottleneck (conv, "
                     "depthwise conv or matmul kernels with their bias or "
                     "BatchNorm offset; BatchNorm statistics and scales stay "
                     "frozen). 0: off.")
flags.DEFINE_string("fine_tune_from", _H.fine_tune_from or None,
                    "Instead of --fine_tune_layers: train everything "
                    "between this tensor and the bottleneck.")
flags.DEFINE_integer("fine_tune_steps", _H.fine_tune_steps,
                     "Fine-tuning steps (0: about 20 passes over the "
                     "training set, logged).")
flags.DEFINE_float("fine_tune_learning_rate", _H.fine_tune_learning_rate,
                   "Fine-tuning learning rate (0: --learning_rate / 10).")
flags.DEFINE_float("fine_tune_momentum", _H.fine_tune_momentum,
                   "Momentum of fine-tuning's SGD.")
flags.DEFINE_integer("fine_tune_batch_size", _H.fine_tune_batch_size,
                     "Images per fine-tuning step.")
flags.DEFINE_integer("fine_tune_patience", _H.fine_tune_patience,
                     "Stop fine-tuning after this many evaluations without "
                     "a lower validation cross entropy (0: run every step).")
flags.DEFINE_enum("fine_tune_schedule", _H.fine_tune_schedule,
                  ["cosine", "constant"],
                  "Fine-tuning learning rate: from --fine_tune_learning_rate "
                  "down to 0 along a cosine, or constant.")
flags.DEFINE_enum("fine_tune_pick", _H.fine_tune_pick, ["last", "best"],
                  "The fine-tuned model kept: the last step's, if it beats "
                  "stage 1 on validation; or the evaluation with the lowest "
                  "validation cross entropy that beats stage 1 by more than "
                  "chance. Else stage 1's model is exported.")
flags.DEFINE_float("fine_tune_weight_decay", _H.fine_tune_weight_decay,
                   "Weight decay of the new layer during fine-tuning (-1: "
                   "stage 1's, as chosen or given by --weight_decay; 0: "
                   "none).")

GROUPS.group("Outputs and deployment formats")
flags.DEFINE_string("output_graph", _R.output_graph,
                    "Where to write the retrained frozen graph (a .json "
                    "description is written beside it).")
flags.DEFINE_string("output_labels", _R.output_labels,
                    "Where to write the labels, one per line.")
flags.DEFINE_string("final_tensor_name", _R.final_tensor_name,
                    "Name of the output softmax tensor.")
flags.DEFINE_string("saved_model_dir", _R.saved_model_dir,
                    "Where to write a SavedModel for serving (empty: none).")
flags.DEFINE_string("tflite_output", _R.tflite_output,
                    "Where to write a TFLite model (empty: none); its labels "
                    "and JSON go beside it.")
flags.DEFINE_enum("tflite_quantize", _R.tflite_quantize,
                  ["none", "dynamic", "int8"],
                  "TFLite quantization: none (float32), dynamic (8-bit "
                  "weights) or int8 (full-integer, calibrated on training "
                  "images).")
flags.DEFINE_enum("tflite_input", _R.tflite_input, ["image", "model_input"],
                  "What the TFLite model takes: image (RGB pixels 0..255 "
                  "at the model's size; it scales inside) or model_input "
                  "(the CNN's own input, scaled by the client as (x - mean) "
                  "/ std, as the classic codelab's Android and iOS apps "
                  "feed graph.lite).")
flags.DEFINE_string("tfjs_output", _R.tfjs_output,
                    "Where to write a TensorFlow.js graph model (a folder: "
                    "model.json, weight shards, labels, and index.html, a "
                    "demo page; empty: none).")
flags.DEFINE_enum("tfjs_quantize", _R.tfjs_quantize,
                  ["none", "float16", "uint8"],
                  "How --tfjs_output stores its weights: none (float32), "
                  "float16 (half the size) or uint8 (a quarter; each "
                  "tensor's min and scale kept).")
flags.DEFINE_string("onnx_output", _R.onnx_output,
                    "Where to write an ONNX model (a .onnx file) for ONNX "
                    "Runtime: input image float32 [batch, H, W, 3] RGB "
                    "0..255, output the class probabilities; the labels, "
                    "input size and scaling in its metadata. Needs the "
                    ".[onnx] extra. Empty: none.")
flags.DEFINE_bool("print_misclassified_test_images",
                  _R.print_misclassified_test_images,
                  "Print every misclassified test image.")

GROUPS.group("The audit (duplicates, leaks, label errors)")
flags.DEFINE_bool("audit", _R.audit,
                  "Audit the images from their cached bottlenecks: exact and "
                  "near duplicates (and the leaks between training and test "
                  "they make), likely label errors, outliers. One log line, "
                  "audit.json beside report.json, a section in report.html; "
                  "it changes nothing unless --dedupe or "
                  "--exclude_from_training says so.")
flags.DEFINE_enum("dedupe", _R.dedupe, ["none", "group"],
                  "group: every duplicate group the audit finds is put in "
                  "the set of its member whose path sorts first, so no "
                  "group spans training and test (changes the split of "
                  "those images only; nothing on disk moves).")
flags.DEFINE_string("exclude_from_training", _R.exclude_from_training,
                    "An audit.json a run wrote: leave out of training the "
                    "images it lists as likely label errors or outliers and "
                    "the members of duplicate groups that span classes "
                    "(they stay in validation and test).")

GROUPS.group("The unknown answer (photos of none of the classes)")
flags.DEFINE_string("unknown_label", _R.unknown_label,
                    "Add one more class with this label (e.g. unknown), "
                    "last in the labels: every export answers it for a photo "
                    "far from all training photos (cosine distance of its "
                    "bottleneck to the 5th nearest kept training photo, "
                    "computed inside the model). Empty: no such class.")
flags.DEFINE_float("unknown_accept", _R.unknown_accept,
                   "With --unknown_label: the share of the known classes' "
                   "validation photos the classifier still answers with a "
                   "known class (sets the distance threshold).")
flags.DEFINE_string("unknown_dir", _R.unknown_dir,
                    "With --unknown_label: a folder of photos of none of the "
                    "classes (any layout), scored and reported (share "
                    "answered unknown, AUROC); never trained on.")
flags.DEFINE_integer("unknown_keep", _R.unknown_keep,
                     "With --unknown_label: at most this many training "
                     "photos (a stratified sample) are kept in every export "
                     "to measure the distance to: the export grows by "
                     "unknown_keep x bottleneck size x 4 bytes.")
flags.DEFINE_float("unknown_reject", _R.unknown_reject,
                   "With --unknown_dir: set the threshold so that this share "
                   "of half of those photos (chosen by a hash of the file "
                   "name) is answered unknown, instead of by "
                   "--unknown_accept; the other half is reported. 0: off.")

GROUPS.group("The bottleneck cache and large data (Beam, cloud paths, memory)")
flags.DEFINE_string("bottleneck_dir", _R.bottleneck_dir,
                    "Folder of the bottleneck cache.")
flags.DEFINE_integer("bottleneck_batch_size", _R.bottleneck_batch_size,
                     "Images per CNN run when computing bottlenecks "
                     "(default: chosen for the model and machine by timing "
                     "the first batches of 8, 16, 32 and 64, and logged).")
flags.DEFINE_bool("only_bottlenecks", _R.only_bottlenecks,
                  "Compute and cache the bottlenecks (and augmented copies) "
                  "of every image, then stop: no training, no outputs. A "
                  "later run trains from the cache.")
flags.DEFINE_string("beam_runner", _R.beam_runner,
                    "Compute the bottlenecks that are not cached yet (and "
                    "augmented copies and fine-tuning cut activations) with "
                    "an Apache Beam pipeline on this runner: DirectRunner, "
                    "DaskRunner, DataflowRunner, FlinkRunner, SparkRunner, "
                    "PortableRunner, PrismRunner. Needs pip install "
                    "'retrain[beam]' ('retrain[dask]' for DaskRunner). "
                    "Default: in this process.")
flags.DEFINE_string("beam_options", _R.beam_options,
                    "Beam pipeline options for --beam_runner, as one string, "
                    "e.g. \"--direct_running_mode=multi_processing "
                    "--direct_num_workers=2\", \"--project=P --region=R "
                    "--temp_location=gs://B/tmp --setup_file=./setup.py\" or "
                    "\"--dask_client_address=HOST:PORT\" (without it, "
                    "DaskRunner starts a local cluster).")
flags.DEFINE_float("max_in_memory_mb", _R.max_in_memory_mb,
                   "Bottlenecks larger than this stay on disk (memory-"
                   "mapped from the cache index) during training; 0: a "
                   "quarter of physical memory.")

GROUPS.group("The rest (TensorBoard, checkpoints, logging)")
flags.DEFINE_string("summaries_dir", _R.summaries_dir, "Where TensorBoard "
                    "summaries go, in a new run-* folder (empty: none).")
flags.DEFINE_string("checkpoint_path", _R.checkpoint_path,
                    "Where to save the trained layer's checkpoint (empty: "
                    "none).")
flags.DEFINE_string("intermediate_output_graphs_dir",
                    _R.intermediate_output_graphs_dir,
                    "Where intermediate graphs go.")
flags.DEFINE_integer("intermediate_store_frequency",
                     _R.intermediate_store_frequency,
                     "Write an intermediate graph every this many steps "
                     "(0: never).")
flags.DEFINE_enum("logging_verbosity", "INFO",
                  ["DEBUG", "INFO", "WARN", "ERROR", "FATAL"],
                  "How much to log.")

GROUPS.end()

FLAGS = flags.FLAGS


def parse_input_size(text: Optional[str]) -> Optional[Tuple[int, int]]:
  """'224' or '224,224' or '299x299' -> (height, width)."""
  if text is None or text == "":
    return None
  parts = text.replace("x", ",").split(",")
  try:
    dims = [int(p) for p in parts]
  except ValueError:
    dims = []
  if len(dims) == 1:
    dims = dims * 2
  if len(dims) != 2 or min(dims) <= 0:
    raise UserError(f"--input_size={text}: expected HEIGHT,WIDTH, e.g. "
                    "224,224")
  return dims[0], dims[1]


def _architecture(f) -> str:
  """--architecture, or inception_v3 when --model_dir alone names where the
  classic models are; "" when another flag names the model."""
  for other in ("graph", "tfhub_module"):
    if f.architecture and f[other].present:
      raise UserError(
          f"--architecture={f.architecture} and --{other}={f[other].value} "
          f"both name the model; pass one (--{other} alone uses that model "
          "as it is; --architecture alone uses the classic model from "
          "--model_dir)")
  if f.architecture:
    return f.architecture
  if f["model_dir"].present and not (f["graph"].present or
                                     f["tfhub_module"].present):
    return "inception_v3"  # The classic tool's default architecture.
  return ""


def from_argv(argv) -> Tuple[RunConfig, HParams, ModelOptions]:
  """The parsed flags as config tuples, for an entry point's main(argv):
  a positional argument left over is an error."""
  if len(argv) > 1:
    raise UserError(
        f"unexpected argument {argv[1]!r}; flags are written --name=value")
  return to_config(FLAGS)


def _split(text: Optional[str]) -> List[str]:
  return [part.strip() for part in (text or "").split(",")]


def _per_model(f, flag: str, count: int) -> List[str]:
  """--flag's values, one per model: one value for every model, or a
  comma-separated list with one per model ("" where not given)."""
  value = f[flag].value
  if value is None or value == "":
    return [""] * count
  parts = _split(value)
  if flag == "input_size" and count == 1:
    return [value]
  if len(parts) == 1:
    return parts * count
  if len(parts) != count:
    raise UserError(
        f"--{flag}={value}: {len(parts)} values for {count} models; give "
        "one value (for every model) or one per model, comma-separated, in "
        "model order (--graph's, then --tfhub_module's)")
  return parts


def _float(flag: str, text: str) -> Optional[float]:
  if not text:
    return None
  try:
    return float(text)
  except ValueError:
    raise UserError(f"--{flag}={text}: not a number") from None


def model_options(f=FLAGS) -> Union[ModelOptions, Tuple[ModelOptions, ...]]:
  """The model flags as ModelOptions, or a tuple of them for several
  models (--graph's, then --tfhub_module's, each in the order given)."""
  architecture = _architecture(f)
  graphs = [g for g in _split(f.graph) if g] if f.graph else []
  modules = ([m for m in _split(f.tfhub_module) if m]
             if (f["tfhub_module"].present or not graphs) and
             not architecture else [])
  if architecture:
    if f.graph:
      raise UserError(f"--architecture={architecture} and --graph both "
                      "name the model; pass one")
    graphs = []
  kinds = ["graph"] * len(graphs) + ["tfhub_module"] * len(modules)
  count = max(len(kinds), 1)
  values = {flag: _per_model(f, flag, count) for flag in (
      "input_tensor", "bottleneck_tensor", "input_size", "input_mean",
      "input_std")}
  for flag in ("input_tensor", "bottleneck_tensor"):
    given = f[flag].value is not None and f[flag].value != ""
    if given and not (graphs or architecture):
      raise UserError(f"--{flag} applies to --graph and --architecture only;"
                      " TF-Hub modules name their tensors in their signature")
    if given and len(_split(f[flag].value)) > 1:
      for kind, value in zip(kinds, values[flag]):
        if value and kind == "tfhub_module":
          raise UserError(f"--{flag}={f[flag].value}: a value for a "
                          "--tfhub_module model; leave its place empty")
    values[flag] = [v if kind != "tfhub_module" else ""
                    for kind, v in zip(kinds or ["graph"], values[flag])]
  models = []
  for i, kind in enumerate(kinds or ["graph"]):
    models.append(ModelOptions(
        graph=graphs[i] if kind == "graph" and i < len(graphs) else "",
        tfhub_module=(modules[i - len(graphs)] if kind == "tfhub_module"
                      else ""),
        architecture=architecture, model_dir=f.model_dir,
        input_tensor=values["input_tensor"][i] or None,
        bottleneck_tensor=values["bottleneck_tensor"][i] or None,
        input_size=parse_input_size(values["input_size"][i]),
        input_mean=_float("input_mean", values["input_mean"][i]),
        input_std=_float("input_std", values["input_std"][i]),
        allow_unsafe_graph_ops=f.allow_unsafe_graph_ops,
        preprocessing=f.preprocessing))
  return models[0] if len(models) == 1 else tuple(models)


def to_config(f=FLAGS) -> Tuple[RunConfig, HParams, ModelOptions]:
  """The parsed flags as the library's config tuples (the model: a tuple
  of ModelOptions for several models)."""
  model = model_options(f)
  hparams = HParams(
      how_many_training_steps=f.how_many_training_steps,
      learning_rate=f.learning_rate, train_batch_size=f.train_batch_size,
      validation_batch_size=f.validation_batch_size,
      test_batch_size=f.test_batch_size,
      eval_step_interval=f.eval_step_interval, random_seed=f.random_seed,
      class_sampling=f.class_sampling,
      weight_decay=f.weight_decay, label_smoothing=f.label_smoothing,
      learning_rate_schedule=f.learning_rate_schedule,
      fine_tune_layers=f.fine_tune_layers,
      fine_tune_from=f.fine_tune_from or "",
      fine_tune_steps=f.fine_tune_steps,
      fine_tune_learning_rate=f.fine_tune_learning_rate,
      fine_tune_momentum=f.fine_tune_momentum,
      fine_tune_batch_size=f.fine_tune_batch_size,
      fine_tune_patience=f.fine_tune_patience,
      fine_tune_schedule=f.fine_tune_schedule,
      fine_tune_pick=f.fine_tune_pick,
      fine_tune_weight_decay=f.fine_tune_weight_decay)
  config = RunConfig(
      image_dir=f.image_dir, bottleneck_dir=f.bottleneck_dir,
      output_graph=f.output_graph, output_labels=f.output_labels,
      summaries_dir=f.summaries_dir, saved_model_dir=f.saved_model_dir,
      tflite_output=f.tflite_output, tflite_quantize=f.tflite_quantize,
      tflite_input=f.tflite_input,
      tfjs_output=f.tfjs_output, tfjs_quantize=f.tfjs_quantize,
      onnx_output=f.onnx_output,
      checkpoint_path=f.checkpoint_path,
      intermediate_output_graphs_dir=f.intermediate_output_graphs_dir,
      intermediate_store_frequency=f.intermediate_store_frequency,
      testing_percentage=f.testing_percentage,
      validation_percentage=f.validation_percentage,
      final_tensor_name=f.final_tensor_name,
      print_misclassified_test_images=f.print_misclassified_test_images,
      eval_log_interval=(f.eval_step_interval
                         if f["eval_step_interval"].present else 0),
      bottleneck_batch_size=f.bottleneck_batch_size,
      only_bottlenecks=f.only_bottlenecks,
      beam_runner=f.beam_runner, beam_options=f.beam_options,
      max_in_memory_mb=f.max_in_memory_mb,
      flip_left_right=f.flip_left_right, random_crop=f.random_crop,
      random_scale=f.random_scale, random_brightness=f.random_brightness,
      augmentation_copies=f.augmentation_copies, audit=f.audit,
      dedupe=f.dedupe, exclude_from_training=f.exclude_from_training,
      unknown_label=f.unknown_label, unknown_accept=f.unknown_accept,
      unknown_dir=f.unknown_dir, unknown_keep=f.unknown_keep,
      unknown_reject=f.unknown_reject)
  if hparams.fine_tuning() and not isinstance(model, ModelOptions):
    raise UserError("--fine_tune_layers/--fine_tune_from: fine-tuning works "
                    f"on one model, and {len(model)} are given; fine-tune "
                    "each alone, or train one layer on all")
  return config, hparams, model
