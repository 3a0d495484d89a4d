"""Fine-tuning (stage 2) against head-only training, and against Keras.

  python benchmarks/fine_tune.py [--models=mobilenet_v1_075_224,...]
      [--datasets=flower_photos_dev,cats_dogs_small] [--folds=5]
      [--variants=plain,flips,flips3] [--fine_tune_layers=2]
      [--fine_tune_schedule=cosine] [--fine_tune_pick=last]
      [--fine_tune_weight_decay=0] [--keras_epochs=2]

Accuracy: k-fold cross-validation on each shared data set. Fold k's test
photos are those whose name hashes to k; of the rest, 1 in 8 (retrain's own
hash rule) validate and the others train. Each fold is one run of the
pipeline's stages at default settings plus --fine_tune_layers: stage 1 (the
new softmax layer on cached bottlenecks: "head only") and stage 2 (the CNN's
top trained from cached cut activations: "fine-tuned", which is stage 1's
model when stage 2 never beat it on validation). Variant "plain" has no
augmentation; "flips" adds --flip_left_right and one augmentation copy,
"flips3" --flip_left_right and three.

Speed: seconds per fine-tuning epoch (a pass over fold 0's training images,
evaluations included) against the tutorials' recipe, a Keras loop with the
same top block trainable that decodes and runs every image through the
frozen base again every epoch (`keras.applications.MobileNet` with the
shared `.h5` weights where there are some, else the same architecture with
random weights: the time is the same). Also the cut-cache bytes per image
and each configuration's peak resident memory (its own process).

Each (model, data set, variant) runs in a fresh process of this script; the
cache is shared between them under --work_dir, so folds and variants reuse
each other's bottlenecks and cut activations.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

from absl import app, flags  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("models", ["mobilenet_v1_075_224", "mobilenet_v1_025_224"],
                  "Model folders of ../shared/models.")
flags.DEFINE_list("datasets", ["flower_photos_dev", "cats_dogs_small"],
                  "Data set folders of ../shared/datasets.")
flags.DEFINE_list("variants", ["plain", "flips", "flips3"],
                  "plain: no augmentation; flips3: --flip_left_right and "
                  "three augmentation copies; flips: --flip_left_right and one "
                  "augmentation copy.")
flags.DEFINE_integer("folds", 5, "Cross-validation folds.")
flags.DEFINE_integer("fine_tune_layers", 2, "--fine_tune_layers.")
flags.DEFINE_string("fine_tune_schedule", "cosine", "--fine_tune_schedule.")
flags.DEFINE_string("fine_tune_pick", "last", "--fine_tune_pick.")
flags.DEFINE_float("fine_tune_weight_decay", 0.0, "--fine_tune_weight_decay.")
flags.DEFINE_integer("keras_epochs", 2, "Keras epochs timed (the last is "
                     "reported: the first includes tracing); 0: no Keras.")
flags.DEFINE_string("work_dir", None, "Cache and scratch folder (default: a "
                    "new temporary one).")
flags.DEFINE_string("one", None, "Internal: MODEL:DATASET:VARIANT in this "
                    "process, JSON on the last line.")
flags.DEFINE_string("keras", None, "Internal: MODEL:DATASET, the Keras loop "
                    "in this process, JSON on the last line.")
FLAGS = flags.FLAGS

VARIANTS = {"plain": {},
            "flips": dict(flip_left_right=True, augmentation_copies=1),
            "flips3": dict(flip_left_right=True, augmentation_copies=3)}
KERAS_WIDTH = {"mobilenet_v1_075_224": 0.75, "mobilenet_v1_025_224": 0.25,
               "mobilenet_v1_025_128": 0.25}
fold_lists = common.fold_lists


def _model_options(name: str):
  return common.shared_model_options(name)


def _dataset(name: str) -> str:
  return os.path.join(common.shared_dir(), "datasets", name)


def run_one(model_name: str, dataset: str, variant: str, work: str) -> dict:
  """k-fold cross-validation of one configuration in this process."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain import pipeline, tfimport
  from retrain.config import HParams, RunConfig
  from retrain.data import images
  from retrain.features import cut as cuts
  from retrain.features.model import load_feature_extractor
  tfimport.quiet_tensorflow()
  cache_dir = os.path.join(work, "cache")
  config = RunConfig(image_dir=_dataset(dataset), bottleneck_dir=cache_dir,
                     summaries_dir="", checkpoint_path="",
                     output_graph=os.path.join(work, "unused.pb"),
                     output_labels=os.path.join(work, "unused.txt"),
                     intermediate_store_frequency=0, **VARIANTS[variant])
  hparams = HParams(fine_tune_layers=FLAGS.fine_tune_layers,
                    fine_tune_schedule=FLAGS.fine_tune_schedule,
                    fine_tune_pick=FLAGS.fine_tune_pick,
                    fine_tune_weight_decay=FLAGS.fine_tune_weight_decay)
  fx = load_feature_extractor(_model_options(model_name), cache_dir)
  no_template = concurrent.futures.Future()
  no_template.set_result(None)
  folds = []
  for k in range(FLAGS.folds):
    start = time.monotonic()
    inputs = pipeline.Inputs(fold_lists(config.image_dir, k, FLAGS.folds), fx)
    data = pipeline.compute_bottlenecks(inputs, config, hparams.random_seed)
    with pipeline.Summaries("") as summaries:
      layer = pipeline.train_layer(inputs, data, config, hparams, no_template,
                                   summaries)
      stage = pipeline.fine_tune_top(inputs, layer, config, hparams,
                                     summaries)
    truth = layer.test.truth
    head = float(np.mean(np.argmax(layer.test.probabilities, 1) == truth))
    tuned = (stage.result.test_probabilities if stage.result.improved
             else layer.test.probabilities)
    result = stage.result
    images_seen = result.steps_run * hparams.fine_tune_batch_size
    folds.append(dict(
        fold=k, test=len(truth), train=len(data.sets[images.TRAINING]),
        head=head,
        fine_tuned=float(np.mean(np.argmax(tuned, 1) == truth)),
        improved=result.improved, best_step=result.best_step,
        steps=result.steps_run, stage2_seconds=result.seconds,
        epoch_seconds=result.seconds * len(data.sets[images.TRAINING]) /
        max(images_seen, 1),
        cut_vectors_computed=stage.cut_vectors_computed,
        seconds=time.monotonic() - start))
    print(json.dumps(folds[-1]), flush=True)
  cut = cuts.choose_cut(fx.graph_def, fx.bottleneck_tensor,
                        FLAGS.fine_tune_layers)
  cfx = cuts.cut_feature_extractor(fx, cut)
  return dict(model=model_name, dataset=dataset, variant=variant,
              folds=folds, cut_bytes_per_image=_bytes_per_image(
                  cache_dir, cfx.tag), cut_floats=cfx.bottleneck_size,
              peak_rss_mb=common.peak_rss_mb())


def _bytes_per_image(cache_dir: str, tag: str) -> float:
  """Disk bytes of one image's sidecar file of a cache tag (the packed
  index holds the same vector again)."""
  sizes = [os.path.getsize(os.path.join(root, f))
           for root, _, files in os.walk(cache_dir) for f in files
           if f.endswith(f".{tag}.bn")]
  return sum(sizes) / max(len(sizes), 1)


def run_keras(model_name: str, dataset: str) -> dict:
  """Seconds per epoch of the Keras recipe on fold 0's training images."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from retrain import tfimport  # pylint: disable=g-import-not-at-top
  tfimport.quiet_tensorflow()
  lists = fold_lists(_dataset(dataset), 0, FLAGS.folds)
  paths, labels = [], []
  for index, c in enumerate(lists.classes):
    for rel in c.training:
      paths.append(lists.path(c, rel))
      labels.append(index)
  size = int(model_name.rsplit("_", 1)[1])
  weights_file = os.path.join(common.shared_dir(), "models", model_name,
                              "mobilenet_7_5_224_tf_no_top.h5")
  base = tf.keras.applications.MobileNet(
      input_shape=(size, size, 3), alpha=KERAS_WIDTH[model_name],
      include_top=False, pooling="avg",
      weights=weights_file if os.path.exists(weights_file) else None)
  base.trainable = True
  top = {"conv_dw_13", "conv_pw_13"}  # The last separable block's kernels.
  for layer in base.layers:
    layer.trainable = layer.name in top
  inputs = tf.keras.Input((size, size, 3))
  features = base(inputs, training=False)  # BatchNorm in inference mode.
  outputs = tf.keras.layers.Dense(len(lists.classes),
                                  activation="softmax")(features)
  net = tf.keras.Model(inputs, outputs)
  net.compile(tf.keras.optimizers.SGD(1e-3, momentum=0.9),
              "sparse_categorical_crossentropy", metrics=["accuracy"])

  def load(path, label):
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    image = tf.image.resize(image, (size, size))
    return image / 127.5 - 1.0, label

  data = (tf.data.Dataset.from_tensor_slices((paths, labels))
          .shuffle(len(paths), seed=0)
          .map(load, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(32).prefetch(tf.data.AUTOTUNE))
  epochs = []
  for _ in range(FLAGS.keras_epochs):
    start = time.monotonic()
    net.fit(data, epochs=1, verbose=0)
    epochs.append(time.monotonic() - start)
  return dict(model=model_name, dataset=dataset, images=len(paths),
              epoch_seconds=epochs, trainable=int(sum(
                  tf.size(w).numpy() for w in net.trainable_weights)),
              real_weights=os.path.exists(weights_file),
              peak_rss_mb=common.peak_rss_mb())


def _child(flag: str, value: str, work: str) -> dict:
  """Runs this script with --flag=value in a fresh process; its JSON."""
  args = [sys.executable, os.path.abspath(__file__), f"--{flag}={value}",
          f"--work_dir={work}", f"--folds={FLAGS.folds}",
          f"--fine_tune_layers={FLAGS.fine_tune_layers}",
          f"--fine_tune_schedule={FLAGS.fine_tune_schedule}",
          f"--fine_tune_pick={FLAGS.fine_tune_pick}",
          f"--fine_tune_weight_decay={FLAGS.fine_tune_weight_decay}",
          f"--keras_epochs={FLAGS.keras_epochs}"]
  proc = subprocess.run(args, capture_output=True, text=True, check=False)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode or not lines:
    sys.exit(f"{value} failed:\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1])


def _percent(values) -> str:
  return f"{100 * sum(values) / len(values):.1f}"


def main(_):
  work = FLAGS.work_dir or tempfile.mkdtemp(prefix="retrain_ft_bench_")
  if FLAGS.one:
    print(json.dumps(run_one(*FLAGS.one.split(":"), work)))
    return
  if FLAGS.keras:
    print(json.dumps(run_keras(*FLAGS.keras.split(":"))))
    return
  print(f"Cache: {work}; {FLAGS.folds}-fold cross-validation, "
        f"--fine_tune_layers={FLAGS.fine_tune_layers}", flush=True)
  accuracy, speed = [], []
  for model_name in FLAGS.models:
    for dataset in FLAGS.datasets:
      plain = None
      for variant in FLAGS.variants:
        r = _child("one", f"{model_name}:{dataset}:{variant}", work)
        folds = r["folds"]
        plain = plain or (r if variant == "plain" else None)
        gains = [f["fine_tuned"] - f["head"] for f in folds]
        accuracy.append([
            model_name, dataset, variant, sum(f["test"] for f in folds),
            _percent([f["head"] for f in folds]),
            _percent([f["fine_tuned"] for f in folds]),
            f"{100 * min(gains):+.1f} / {100 * max(gains):+.1f}",
            f"{sum(f['improved'] for f in folds)}/{len(folds)}",
            f"{sum(f['stage2_seconds'] for f in folds) / len(folds):.1f}",
            f"{r['peak_rss_mb']:.0f}"])
        print(common.table(accuracy[-1:], ACCURACY_HEADER), flush=True)
      if plain and FLAGS.keras_epochs:
        k = _child("keras", f"{model_name}:{dataset}", work)
        ours = plain["folds"][0]["epoch_seconds"]
        theirs = k["epoch_seconds"][-1]
        speed.append([model_name, dataset, k["images"], f"{ours:.2f}",
                      f"{theirs:.2f}", f"{theirs / ours:.1f}x",
                      f"{plain['cut_bytes_per_image'] / 1024:.0f} KB "
                      f"({plain['cut_floats']:,} floats) x 2",
                      f"{plain['peak_rss_mb']:.0f} / {k['peak_rss_mb']:.0f}"])
        print(common.table(speed[-1:], SPEED_HEADER), flush=True)
  print("\nAccuracy (test photos of all folds; fine-tuned = stage 1's model "
        "where stage 2 never beat it on validation)")
  print(common.table(accuracy, ACCURACY_HEADER))
  if speed:
    print("\nSeconds per fine-tuning epoch, fold 0's training images "
          "(retrain: cached cut activations, evaluations included; Keras: "
          "decode + frozen base + top every epoch, its last epoch)")
    print(common.table(speed, SPEED_HEADER))


ACCURACY_HEADER = ["model", "data", "variant", "test photos",
                   "head only %", "fine-tuned %", "fold gain min / max",
                   "stage 2 kept", "stage 2 s/fold", "peak RSS MB"]
SPEED_HEADER = ["model", "data", "images", "retrain s/epoch",
                "Keras s/epoch", "speed-up",
                "cut cache per image (sidecar x 2 with the index)",
                "peak RSS MB retrain / Keras"]


if __name__ == "__main__":
  app.run(main)
