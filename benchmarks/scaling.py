"""How cost grows with the number of images.

  python benchmarks/scaling.py [--sizes=500,5000,50000] [--work_dir=DIR]

For each size, makes that many images by re-encoding the dev flower photos
with small random crops (kept in --work_dir for later runs), then computes
their bottlenecks in a fresh process and reports extraction time, rate and
the process's peak RSS. Finally it writes 100 000 cached bottlenecks (random
vectors for placeholder image files, all valid cache entries) and times
whole warm runs over them (load, 4000 training steps, export): the first,
which reads the sidecars and writes the packed index; one that reads the
index; and one that trains from the memory-mapped index instead of memory.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

from absl import app, flags  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("sizes", ["500", "5000", "50000"], "Image counts.")
flags.DEFINE_integer("cached", 100000, "Cached bottlenecks for the "
                     "load-and-train measurement (0: skip).")
flags.DEFINE_string("work_dir", None, "Where generated images go (default: "
                    "a folder in the system temp dir, reused).")
flags.DEFINE_string("graph", None, "Frozen graph (default: shared "
                    "mobilenet_v1_025_128).")
flags.DEFINE_string("child", None, "Internal: extract|train.")
flags.DEFINE_float("max_in_memory_mb", 0, "Internal: --max_in_memory_mb of "
                   "the train child.")
flags.DEFINE_string("child_dir", None, "Internal.")
FLAGS = flags.FLAGS


def make_images(root: str, count: int) -> str:
  """root/<class>/<n>.jpg: `count` random crops of the dev photos."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  marker = os.path.join(root, ".complete")
  if os.path.exists(marker):
    return root
  source = common.dev_images()
  classes = sorted(c for c in os.listdir(source)
                   if os.path.isdir(os.path.join(source, c)))
  photos = {c: sorted(os.listdir(os.path.join(source, c))) for c in classes}
  rng = random.Random(0)
  for i in range(count):
    c = classes[i % len(classes)]
    name = photos[c][(i // len(classes)) % len(photos[c])]
    image = Image.open(os.path.join(source, c, name)).convert("RGB")
    w, h = image.size
    dx, dy = rng.randint(0, w // 10), rng.randint(0, h // 10)
    crop = image.crop((dx, dy, w - rng.randint(0, w // 10),
                       h - rng.randint(0, h // 10)))
    os.makedirs(os.path.join(root, c), exist_ok=True)
    crop.save(os.path.join(root, c, f"{i:06d}.jpg"), quality=90)
  open(marker, "w").close()
  return root


def _child_extract(image_dir: str) -> dict:
  from retrain import tfimport  # pylint: disable=g-import-not-at-top
  from retrain.config import RunConfig
  from retrain.data import images  # pylint: disable=g-import-not-at-top
  from retrain.features import bottlenecks, model  # pylint: disable=g-import-not-at-top
  tfimport.quiet_tensorflow()
  fx = model.load_feature_extractor(common.model_choice(FLAGS.graph)[0])
  lists = images.list_images(image_dir, 10, 10)
  bn = tempfile.mkdtemp(prefix="retrain_scaling_bn_")
  start = time.perf_counter()
  _, filled, _ = bottlenecks.compute_bottlenecks(
      lists, fx, RunConfig(image_dir=image_dir, bottleneck_dir=bn))
  seconds = time.perf_counter() - start
  shutil.rmtree(bn)
  return dict(images=filled.computed, seconds=seconds)


def _child_train(root: str) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import cache  # pylint: disable=g-import-not-at-top
  from retrain import pipeline, tfimport  # pylint: disable=g-import-not-at-top
  from retrain.config import HParams, RunConfig
  from retrain.features import model  # pylint: disable=g-import-not-at-top
  tfimport.quiet_tensorflow()
  options = common.model_choice(FLAGS.graph)[0]
  fx = model.load_feature_extractor(options)
  image_dir = os.path.join(root, "images")
  bn = os.path.join(root, "bottlenecks")
  marker = os.path.join(root, f".complete-{FLAGS.cached}-{fx.tag}")
  if not os.path.exists(marker):
    store = cache.BottleneckCache(bn, fx.tag)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, fx.bottleneck_size))
    for i in range(FLAGS.cached):
      c = f"class{i % 5}"
      path = os.path.join(image_dir, c, f"{i:06d}.jpg")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(b"placeholder: never decoded, its bottleneck is cached")
      vector = np.maximum(centers[i % 5] + rng.normal(
          size=fx.bottleneck_size), 0).astype(np.float32)
      store.store(cache.ImageRef(path, c, f"{i:06d}.jpg"), vector,
                  cache.SourceFingerprint.of(path))
    open(marker, "w").close()
  config = RunConfig(image_dir=image_dir, bottleneck_dir=bn,
                     output_graph=os.path.join(root, "out", "graph.pb"),
                     output_labels=os.path.join(root, "out", "labels.txt"),
                     summaries_dir="", checkpoint_path="",
                     max_in_memory_mb=FLAGS.max_in_memory_mb)
  start = time.perf_counter()
  result = pipeline.run(config, HParams(), options)
  seconds = time.perf_counter() - start
  return dict(images=result.bottlenecks_from_cache,
              computed=result.bottlenecks_computed, seconds=seconds)


def _run_child(kind: str, directory: str, *extra: str) -> dict:
  env = dict(os.environ, PYTHONPATH=common.REPO)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), f"--child={kind}",
       f"--child_dir={directory}", f"--cached={FLAGS.cached}", *extra] +
      ([f"--graph={FLAGS.graph}"] if FLAGS.graph else []),
      capture_output=True, text=True, env=env)
  if proc.returncode != 0:
    raise SystemExit(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(_):
  if FLAGS.child:
    out = (_child_extract if FLAGS.child == "extract" else _child_train)(
        FLAGS.child_dir)
    out["peak_rss_mb"] = common.peak_rss_mb()
    print(json.dumps(out))
    return
  work = FLAGS.work_dir or os.path.join(tempfile.gettempdir(),
                                        "retrain_scaling")
  rows = []
  for size in [int(s) for s in FLAGS.sizes]:
    folder = make_images(os.path.join(work, f"images_{size}"), size)
    r = _run_child("extract", folder)
    rows.append([f"extract {size} images", f"{r['seconds']:.1f}",
                 f"{r['images'] / r['seconds']:.0f}/s",
                 f"{r['peak_rss_mb']:.0f}"])
  if FLAGS.cached:
    root = os.path.join(work, f"cached_{FLAGS.cached}")
    index = [os.path.join(root, "bottlenecks", n) for n in (
        os.listdir(os.path.join(root, "bottlenecks"))
        if os.path.isdir(os.path.join(root, "bottlenecks")) else [])
             if n.endswith(".index")]
    for path in index:  # Measure the first run after sidecars, too.
      os.remove(path)
    for what, extra in (
        ("from sidecars (writes the index)", []),
        ("from the index", []),
        ("from the index, on disk (--max_in_memory_mb=1)",
         ["--max_in_memory_mb=1"])):
      r = _run_child("train", root, *extra)
      rows.append([f"{r['images']} cached bottlenecks {what} + 4000 steps "
                   "+ export", f"{r['seconds']:.1f}", "",
                   f"{r['peak_rss_mb']:.0f}"])
  print()
  print(common.table(rows, ["run", "seconds", "rate", "peak RSS MB"]))


if __name__ == "__main__":
  app.run(main)
