"""Immutable run configuration.

The defaults here are also the command-line flags' defaults (see flags.py), so
library code takes these tuples and never reads absl FLAGS.
"""

from typing import NamedTuple, Optional, Tuple

# The classic tool's default model: Inception-v3 feature vectors (TF2 format).
DEFAULT_TFHUB_MODULE = (
    "https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5")


# Augmented copies per training image when a distortion flag is given alone.
DEFAULT_AUGMENTATION_COPIES = 5


class HParams(NamedTuple):
  """Training hyperparameters."""
  how_many_training_steps: int = 4000
  learning_rate: float = 0.01
  train_batch_size: int = 100
  validation_batch_size: int = 100  # -1: the whole validation set.
  test_batch_size: int = -1  # -1: the whole test set.
  eval_step_interval: int = 10
  random_seed: int = 0
  class_sampling: str = "balanced"  # Or "proportional"; see train.py.
  # Regularization of the new layer; -1: chosen, with the learning rate, on
  # held-out cross entropy (training/regularization.py); 0 and 0: the
  # classic tool's training.
  weight_decay: float = -1.0
  label_smoothing: float = 0.0
  # The new layer's learning rate along its steps (training/schedules.py);
  # auto: cosine where the search chooses the rate (weight_decay -1),
  # constant where the flags set it.
  learning_rate_schedule: str = "auto"
  # Stage 2, fine-tuning the top of the CNN (finetune.py); off when both
  # fine_tune_layers and fine_tune_from are unset.
  fine_tune_layers: int = 0  # The last N weight layers below the bottleneck.
  fine_tune_from: str = ""  # Or: everything above this tensor.
  fine_tune_steps: int = 0  # 0: about 20 passes over the training set.
  fine_tune_learning_rate: float = 0.0  # 0: learning_rate / 10.
  fine_tune_momentum: float = 0.9
  fine_tune_batch_size: int = 32
  fine_tune_patience: int = 0  # Evaluations without improvement; 0: none.
  fine_tune_schedule: str = "cosine"  # finetune.SCHEDULES.
  fine_tune_pick: str = "last"  # finetune.PICKS.
  fine_tune_weight_decay: float = 0.0  # -1: stage 1's (chosen) decay.

  def fine_tuning(self) -> bool:
    return bool(self.fine_tune_layers or self.fine_tune_from)


class ModelOptions(NamedTuple):
  """Which pretrained CNN to use and how to feed it.

  Exactly one of `architecture` (a classic tool's model name, found in or
  downloaded into `model_dir`), `graph` (a frozen GraphDef file) and
  `tfhub_module` (a TF-Hub handle or a local SavedModel directory) is used,
  in that order. `None` for a tensor
  name, size or scaling means "recognise it from the model".
  """
  graph: str = ""
  tfhub_module: str = DEFAULT_TFHUB_MODULE
  input_tensor: Optional[str] = None
  bottleneck_tensor: Optional[str] = None
  input_size: Optional[Tuple[int, int]] = None
  input_mean: Optional[float] = None
  input_std: Optional[float] = None
  allow_unsafe_graph_ops: bool = False
  preprocessing: str = "fast"
  # The classic tool's way to name a model (features/classic_models.py):
  # an architecture such as "mobilenet_0.50_224", kept in model_dir.
  architecture: str = ""
  model_dir: str = "/tmp/imagenet"


class Distortions(NamedTuple):
  """Random distortions of training images (the classic tool's flags).

  random_crop: margin in percent cropped away at random (the image is first
  enlarged by that margin); random_scale: extra random enlargement up to this
  percent; random_brightness: multiply pixels by a factor within +-percent;
  flip_left_right: mirror half of the time.
  """
  flip_left_right: bool = False
  random_crop: int = 0
  random_scale: int = 0
  random_brightness: int = 0

  def any(self) -> bool:
    return bool(self.flip_left_right or self.random_crop or
                self.random_scale or self.random_brightness)


class RunConfig(NamedTuple):
  """Where data comes from and where results go."""
  image_dir: str
  bottleneck_dir: str = "/tmp/bottleneck"
  max_in_memory_mb: float = 0.0
  output_graph: str = "/tmp/output_graph.pb"
  output_labels: str = "/tmp/output_labels.txt"
  summaries_dir: str = "/tmp/retrain_logs"
  saved_model_dir: str = ""
  tflite_output: str = ""
  tflite_quantize: str = "none"  # "none", "dynamic" or "int8".
  # "image" (RGB 0..255, scaled inside) or "model_input" (the CNN's own
  # scaled input, as the classic codelab's apps feed it).
  tflite_input: str = "image"
  tfjs_output: str = ""  # A TensorFlow.js folder (model.json, index.html).
  tfjs_quantize: str = "none"  # "none", "float16" or "uint8" weights.
  onnx_output: str = ""  # An ONNX model (.onnx), for ONNX Runtime.
  checkpoint_path: str = "/tmp/_retrain_checkpoint"
  intermediate_output_graphs_dir: str = "/tmp/intermediate_graph/"
  intermediate_store_frequency: int = 0
  testing_percentage: int = 10
  validation_percentage: int = 10
  final_tensor_name: str = "final_result"
  print_misclassified_test_images: bool = False
  # Steps between evaluation lines in a log (not on a terminal); 0: about
  # every 5% of the steps. The command line sets it to --eval_step_interval
  # when that flag is given.
  eval_log_interval: int = 0
  # Images per CNN run when computing bottlenecks; None: chosen by timing
  # the first batches (extract.BatchTuner).
  bottleneck_batch_size: Optional[int] = None
  # Stop once every bottleneck is cached (pipeline.cache_bottlenecks).
  only_bottlenecks: bool = False
  # Compute the missing bottlenecks with an Apache Beam pipeline on this
  # runner ("": in this process); Beam's own options as one string.
  beam_runner: str = ""
  beam_options: str = ""
  # Distortions of training images, cached as augmented copies.
  flip_left_right: bool = False
  random_crop: int = 0
  random_scale: int = 0
  random_brightness: int = 0
  augmentation_copies: int = 0  # 0: 5 when a distortion is set, else none.
  # The audit of the images (retrain/audit/): duplicates, leaks, likely
  # label errors, outliers; audit.json beside report.json.
  audit: bool = True
  dedupe: str = "none"  # Or "group": a duplicate group stays in one set.
  exclude_from_training: str = ""  # An audit.json: its findings not trained.
  # One more class, last, for photos far from every training photo
  # (training/unknown.py): its label ("": none), the share of known
  # validation photos it must accept, photos of none of the classes to
  # report on (never trained on), the training photos kept in the export.
  unknown_label: str = ""
  unknown_accept: float = 0.95
  unknown_dir: str = ""
  unknown_keep: int = 1000
  # > 0: the threshold answers "unknown" for this share of half of the
  # --unknown_dir photos instead (the other half is reported).
  unknown_reject: float = 0.0

  def distortions(self) -> Distortions:
    return Distortions(self.flip_left_right, self.random_crop,
                       self.random_scale, self.random_brightness)

  def copies(self) -> int:
    """How many augmented copies of each training image to use."""
    if self.augmentation_copies:
      return self.augmentation_copies
    return DEFAULT_AUGMENTATION_COPIES if self.distortions().any() else 0
