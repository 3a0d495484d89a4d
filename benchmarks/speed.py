"""Where the time goes, measured side by side in one run.

  python benchmarks/speed.py [--image_dir=DIR] [--graph=PB | --tfhub_module=DIR
                             | --inception_sized] [--max_images=N]
                             [--classic=PATH/TO/retrain.py]

--inception_sized measures a heavy model: an Inception-v3-sized graph with
the classic names, built offline by benchmarks/inception_sized.py (the
classic tool then runs with --architecture=inception_v3 on it).

Prints, for one image folder and model: the model's raw forward throughput on
pre-decoded batches and the decode throughput (their limit for extraction is
min(forward, decode x cores); as decoding and the CNN share the cores, the
shared-core bound 1/(1/forward + 1/(decode x cores)) is printed too),
retrain's extraction throughput in steady state and end to end (cold cache)
as a share of both, the warm cache load time, the time of
4000 training steps, the whole command's wall time cold and warm beside the
TensorFlow import time, and peak RSS; then the cold command's phases (its
"Phases:" log line: model load, extraction, audit, search, training,
export, reports) and its ratio to its floor (the import, the images at the
extraction rate the command logged, and one second). With --classic, TensorFlow's classic
frozen-graph retrain.py (tensorflow-for-poets, --architecture given by
--classic_architecture) runs on the same images under a tf.compat.v1 alias,
and the ratios are printed.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

from absl import app, flags  # pylint: disable=g-import-not-at-top

common.define_model_flags(tfhub=True)

flags.DEFINE_string("classic", None, "Path to the classic retrain.py.")
flags.DEFINE_string("classic_architecture", "mobilenet_0.25_224",
                    "--architecture for the classic tool.")
flags.DEFINE_string("forward_batch_sizes", "1,8,16,32,64",
                    "CNN batch sizes of the raw forward test.")
flags.DEFINE_bool("inception_sized", False, "Measure an Inception-v3-sized "
                  "graph built offline (benchmarks/inception_sized.py).")
flags.DEFINE_integer("max_images", 0, "Use only this many photos (spread "
                     "over the classes; 0: all).")
FLAGS = flags.FLAGS

# A cold run's floor: the TensorFlow import, the images at the rate the
# run extracts them, and about this many seconds for everything else.
FLOOR_EXTRA = 1.0

# Runs the classic tool on current TensorFlow: the tf.compat.v1 API under
# the name tensorflow, and graph_util's freezing function where it used it.
_SHIM = ("import sys, tensorflow.compat.v1 as tf; tf.disable_v2_behavior(); "
         "from tensorflow.python.framework import graph_util as gu; "
         "gu.convert_variables_to_constants = "
         "tf.graph_util.convert_variables_to_constants; "
         "sys.modules['tensorflow'] = tf; sys.argv = sys.argv[1:]; "
         "exec(compile(open(sys.argv[0]).read(), sys.argv[0], 'exec'), "
         "{'__name__': '__main__'})")


# Runs a Python command line and writes its peak RSS (KB) to $RSS_OUT: the
# high-water mark of its own memory map (/proc/self/status VmHWM). Not
# ru_maxrss, which Linux carries over from the parent's memory across fork
# and exec, so a child would report this benchmark's own peak.
_RSS_WRAPPER = (
    "import atexit, os, re, resource, runpy, sys\n"
    "def _peak():\n"
    "  try:\n"
    "    with open('/proc/self/status') as f:\n"
    "      return int(re.search(r'VmHWM:\\s+(\\d+)', f.read()).group(1))\n"
    "  except (OSError, AttributeError):\n"
    "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "atexit.register(lambda: open(os.environ['RSS_OUT'], 'w').write(str("
    "_peak())))\n"
    "sys.argv = sys.argv[1:]\n"
    "if sys.argv[0] == '-m':\n"
    "  sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], "
    "run_name='__main__', alter_sys=True)\n"
    "elif sys.argv[0] == '-c':\n"
    "  code = sys.argv[1]; sys.argv = ['-c'] + sys.argv[2:]; exec(code)\n")


def _child_run(args, env=None, log=None):
  """(wall seconds, peak RSS MB) of `python ARGS...` in a fresh process;
  its stderr appended to the list `log` if given."""
  assert args[0] == sys.executable
  rss_file = tempfile.mktemp(prefix="retrain_rss_")
  env = dict(env or os.environ, RSS_OUT=rss_file)
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *args[1:]],
                        capture_output=True, text=True, env=env,
                        cwd=common.REPO)
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    raise SystemExit(f"{args[:4]} failed:\n{proc.stderr[-3000:]}")
  with open(rss_file) as f:
    peak = int(f.read()) / 1024
  os.remove(rss_file)
  if log is not None:
    log.append(proc.stderr)
  return wall, peak


def _phases(stderr: str, import_time: float, wall: float, images: int):
  """Rows of a cold command's phases (its "Phases:" log line) and its ratio
  to the floor: the TensorFlow import + the images at the extraction rate
  the run logged + FLOOR_EXTRA seconds."""
  from retrain.reports import phases  # pylint: disable=g-import-not-at-top
  line = [l for l in stderr.splitlines() if "Phases: " in l][-1]
  taken = phases.parse(line)
  rates = re.findall(r"Bottlenecks \(\d+ cached, \d+ new\): (\d+)/\1, "
                     r"(\d+)/s", stderr)
  rate = float(rates[-1][1])
  rows = [["cold command: TensorFlow import", f"{import_time:.2f} s", ""]]
  for name, seconds in taken.items():
    rows.append([f"cold command: {name}", f"{seconds:.2f} s",
                 f"{100 * seconds / wall:.0f}% of the command"])
  rest = wall - import_time - sum(taken.values())
  rows.append(["cold command: the rest (start, flags, exit)",
               f"{rest:.2f} s", ""])
  floor = import_time + images / rate + FLOOR_EXTRA
  rows.append(["cold command / floor (import + images at the logged "
               f"extraction rate {rate:.0f}/s + {FLOOR_EXTRA:g} s)",
               f"{wall / floor:.2f}x", f"floor {floor:.1f} s, command "
               f"{wall:.1f} s"])
  return rows


def _classic_model_dir(graph: str, folder: str, architecture: str) -> str:
  """A --model_dir where the classic tool finds `graph` as if it had
  downloaded the model of `architecture` (inception_v3 or
  mobilenet_<version>_<size>): the tarball it looks for, holding the graph
  under the name it reads."""
  import tarfile  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  if architecture == "inception_v3":
    tarball, inside = ("inception-2015-12-05.tgz",
                       "classify_image_graph_def.pb")
  else:
    version, size = architecture.split("_")[1:3]
    name = f"mobilenet_v1_{version}_{size}"
    tarball, inside = f"{name}_frozen.tgz", f"{name}/frozen_graph.pb"
  with tarfile.open(os.path.join(folder, tarball), "w:gz") as tar:
    tar.add(graph, arcname=inside)
  return folder


def main(_):
  from retrain import tfimport  # pylint: disable=g-import-not-at-top
  tfimport.quiet_tensorflow()
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from retrain.config import HParams, RunConfig
  from retrain.data import images
  from retrain.features import bottlenecks, model
  from retrain.features.extract import BottleneckExtractor, ImageDecoder
  from retrain.training import train
  work = tempfile.mkdtemp(prefix="retrain_speed_")
  image_dir = common.dev_images(FLAGS.image_dir)
  if FLAGS.max_images:
    image_dir = common.subset_images(image_dir, FLAGS.max_images,
                                     os.path.join(work, "photos"))
  graph = FLAGS.graph
  classic_architecture = FLAGS.classic_architecture
  if FLAGS.inception_sized:
    import inception_sized  # pylint: disable=g-import-not-at-top
    graph = inception_sized.build()
    classic_architecture = "inception_v3"
  options, model_args = common.model_choice(graph, FLAGS.tfhub_module)
  fx = model.load_feature_extractor(options)
  lists = images.list_images(image_dir, 10, 10)
  paths = [lists.path(c, rel) for c in lists.classes
           for cat in images.CATEGORIES for rel in c.images(cat)]
  cores = os.cpu_count() or 1
  rows = []

  # Decode throughput, one thread; then the raw forward pass on batches.
  decoder = ImageDecoder(fx.input_size, rule=fx.preprocessing)
  decoded = []
  start = time.perf_counter()
  for p in paths:
    decoded.append(decoder.decode(p)[0])
  decode_rate = len(paths) / (time.perf_counter() - start)
  decoder.close()
  forward = {}
  with BottleneckExtractor(fx, batch_size=1) as extractor:
    for size in [int(b) for b in FLAGS.forward_batch_sizes.split(",")]:
      batch = np.stack((decoded * (size // len(decoded) + 1))[:size])
      extractor.bottlenecks(batch)  # A new shape's first run sets up.
      start = time.perf_counter()
      n = 0
      while time.perf_counter() - start < 3 or n < min(len(paths), 64):
        extractor.bottlenecks(batch)
        n += len(batch)
      forward[size] = n / (time.perf_counter() - start)
  forward_rate = max(forward.values())
  # Steady state: one extractor (batch size chosen as by default), start-up
  # and cache excluded (median of three passes after the one that chose).
  with BottleneckExtractor(fx) as extractor:
    while extractor.tuning:
      sum(1 for _ in extractor.compute(paths))
    chosen_batch = extractor.batch_size
    rates = []
    for _ in range(3):
      start = time.perf_counter()
      steady_n = sum(1 for _ in extractor.compute(paths))
      rates.append(steady_n / (time.perf_counter() - start))
    steady_rate = sorted(rates)[1]
  limit = min(forward_rate, decode_rate * cores)
  # Decoding and the CNN share the same cores, so together they cannot beat
  # one image's total CPU time: 1 / (1/forward + 1/(decode x cores)).
  shared = 1 / (1 / forward_rate + 1 / (decode_rate * cores))
  for size, rate in forward.items():
    rows.append([f"raw forward, pre-decoded batches of {size}",
                 f"{rate:.1f}/s", "best (F)" if rate == forward_rate else ""])
  rows.append([f"decode + resize, 1 thread (x {cores} cores)",
               f"{decode_rate:.0f}/s", f"{decode_rate * cores:.0f}/s"])
  rows.append(["extraction limit: min(forward, decode x cores)",
               f"{limit:.0f}/s", ""])
  rows.append(["shared-core bound: 1/(1/forward + 1/(decode x cores))",
               f"{shared:.0f}/s", f"{shared / limit * 100:.0f}% of limit"])
  rows.append([f"retrain extraction, steady state (batch {chosen_batch}, "
               "chosen)", f"{steady_rate:.1f}/s",
               f"{steady_rate / limit * 100:.0f}% of limit, "
               f"{steady_rate / shared * 100:.0f}% of shared bound"])

  # End-to-end extraction, cold cache, then the warm load.
  config = RunConfig(image_dir=image_dir,
                     bottleneck_dir=os.path.join(work, "bn"))
  start = time.perf_counter()
  sets, filled, _ = bottlenecks.compute_bottlenecks(lists, fx, config)
  cold = time.perf_counter() - start
  rows.append(["retrain extraction, cold cache, start-up and cache writes "
               "included", f"{filled.computed / cold:.0f}/s",
               f"{filled.computed / cold / limit * 100:.0f}% of limit, "
               f"{filled.computed / cold / shared * 100:.0f}% of shared "
               "bound"])
  start = time.perf_counter()
  sets, filled, _ = bottlenecks.compute_bottlenecks(lists, fx, config)
  sets = bottlenecks.keep_in_memory(sets, config)
  rows.append(["warm cache load (index, into memory)",
               f"{time.perf_counter() - start:.2f} s", f"{len(paths)} images"])

  hp = HParams()
  tg = train.build_training_graph(fx.bottleneck_size, len(lists.classes), hp)
  with tf.compat.v1.Session(graph=tg.graph) as sess:
    start = time.perf_counter()
    train.train(tg, sess, sets["training"], sets["validation"],
                len(lists.classes), hp)
    rows.append([f"{hp.how_many_training_steps} training steps",
                 f"{time.perf_counter() - start:.2f} s", ""])

  # Whole commands, each in a fresh process.
  env = dict(os.environ, PYTHONPATH=common.REPO)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  # Process start, the import and exit, with the collector frozen after
  # the import as the command does (else exit alone costs 0.6 s).
  import_time, _ = _child_run(
      [sys.executable, "-c", "import gc, tensorflow; gc.freeze()"], env)
  command = [sys.executable, "-m", "retrain", f"--image_dir={image_dir}",
             *model_args, f"--bottleneck_dir={work}/cmd_bn",
             f"--output_graph={work}/out/graph.pb",
             f"--output_labels={work}/out/labels.txt",
             f"--summaries_dir={work}/summaries",
             f"--checkpoint_path={work}/ckpt/c"]
  cold_log = []
  cold_wall, cold_rss = _child_run(command, env, cold_log)
  warm_wall, warm_rss = _child_run(command, env)
  rows.append(["TensorFlow import", f"{import_time:.1f} s", ""])
  rows.append(["whole command, cold cache", f"{cold_wall:.1f} s",
               f"peak RSS {cold_rss:.0f} MB"])
  rows.append(["whole command, warm cache", f"{warm_wall:.1f} s",
               f"import + {warm_wall - import_time:.1f} s; peak RSS "
               f"{warm_rss:.0f} MB"])
  rows += _phases(cold_log[0], import_time, cold_wall, len(paths))
  if FLAGS.classic:
    classic_work = os.path.join(work, "classic")
    model_dir = _classic_model_dir(model_args[0].split("=", 1)[1],
                                   os.path.join(work, "classic_model"),
                                   classic_architecture)
    classic_wall, classic_rss = _child_run(
        [sys.executable, "-c", _SHIM, FLAGS.classic,
         f"--image_dir={image_dir}",
         f"--architecture={classic_architecture}",
         f"--bottleneck_dir={classic_work}/bn",
         f"--model_dir={model_dir}",
         f"--output_graph={classic_work}/graph.pb",
         f"--output_labels={classic_work}/labels.txt",
         f"--summaries_dir={classic_work}/summaries"], env)
    rows.append(["classic retrain.py, cold", f"{classic_wall:.1f} s",
                 f"retrain is {classic_wall / cold_wall:.1f}x faster cold, "
                 f"{classic_wall / warm_wall:.1f}x warm; peak RSS "
                 f"{classic_rss:.0f} MB"])
  shutil.rmtree(work, ignore_errors=True)
  print(f"\n{len(paths)} images, model {fx.source} "
        f"({fx.input_size[0]}x{fx.input_size[1]}), {cores} cores:\n")
  print(common.table(rows, ["measure", "value", "note"]))


if __name__ == "__main__":
  app.run(main)
