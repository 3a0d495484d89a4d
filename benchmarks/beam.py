"""Beam extraction against the in-process extractor, side by side.

  python benchmarks/beam.py [--image_dir=DIR] [--graph=PB] [--repeats=1]
                            [--max_images=N] [--copies=K] [--nodask]
                            [--noone_worker]

On the same images and model (default: the 2 000 photos of
../shared/datasets/cats_dogs_small and MobileNet v1 0.25/128), each way
computes every bottleneck into a new, empty cache, in a fresh process
(`python -m retrain --only_bottlenecks`, whole command timed; with
--repeats, the ways take turns and each one's median run counts): in process
(today's default), Beam's DirectRunner in memory, DirectRunner
multi_processing with 1 and 2 worker processes, and (unless --nodask) the
DaskRunner on a local cluster retrain starts and on a cluster of 2 worker
processes started beforehand (its workers stay warm from one run to the
next, as a standing cluster's do). The cache files' times
split each run into start-up (command start to the first vector written:
imports, workers started, the model loaded) and extraction (first to last
vector written: the steady rate, what more images or more machines
multiply). Prints both, the shares of in-process throughput, Beam's
overhead per image, and checks that every way wrote the same vectors.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

from absl import app, flags  # pylint: disable=g-import-not-at-top

common.define_model_flags(tfhub=False)
flags.DEFINE_integer("repeats", 1, "Runs of each way, taking turns; the "
                     "median run (by whole seconds) counts.")
flags.DEFINE_integer("max_images", 0, "Use this many of the photos, spread "
                     "over the classes (0: all).")
flags.DEFINE_integer("copies", 1, "Link each photo this many times under "
                     "different names: K times the images, each one decoded "
                     "and run through the CNN (a larger job from the same "
                     "photos).")
flags.DEFINE_bool("dask", True, "Also run Beam's DaskRunner: on a local "
                  "cluster that retrain starts (start-up counted), and on "
                  "one the benchmark started before (warm workers, as a "
                  "standing cluster's). Needs pip install '.[dask]'.")
flags.DEFINE_bool("one_worker", True, "Also run DirectRunner with 1 worker "
                  "process.")
flags.DEFINE_list("model_flags", [], "More retrain flags for the model, e.g. "
                  "--input_tensor=input:0,--bottleneck_tensor=...")
FLAGS = flags.FLAGS

WAYS = [
    ("in process", []),
    ("DirectRunner, in memory", ["--beam_runner=DirectRunner"]),
    ("DirectRunner, 1 worker process", [
        "--beam_runner=DirectRunner",
        "--beam_options=--direct_running_mode=multi_processing "
        "--direct_num_workers=1"]),
    ("DirectRunner, 2 worker processes", [
        "--beam_runner=DirectRunner",
        "--beam_options=--direct_running_mode=multi_processing "
        "--direct_num_workers=2"]),
]
DASK_WAYS = [
    ("DaskRunner, local cluster retrain starts", ["--beam_runner=DaskRunner"]),
    # The address is filled in once the benchmark's cluster is up.
    ("DaskRunner, a running cluster (2 workers)", ["--beam_runner=DaskRunner"]),
]


def _dask_cluster():
  """A cluster of 2 worker processes on loopback, as `dask scheduler` and
  two `dask worker` would be."""
  import distributed  # pylint: disable=g-import-not-at-top
  return distributed.LocalCluster(
      n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
      dashboard_address=None, silence_logs=40)


def _run(image_dir, model_flags, extra, work):
  """(seconds, seconds to the first vector written, seconds from the first
  to the last) of one cold --only_bottlenecks command; its vectors stay in
  work/cache."""
  folder = os.path.join(work, "cache")
  shutil.rmtree(folder, ignore_errors=True)
  args = [sys.executable, "-m", "retrain", f"--image_dir={image_dir}",
          *model_flags, f"--bottleneck_dir={folder}",
          f"--output_graph={work}/g.pb", f"--output_labels={work}/l.txt",
          "--only_bottlenecks", *extra]
  start_wall, start = time.time(), time.perf_counter()
  proc = subprocess.run(args, capture_output=True, text=True,
                        cwd=common.REPO, check=False)
  seconds = time.perf_counter() - start
  if proc.returncode:
    sys.exit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
  written = sorted(os.stat(os.path.join(root, f)).st_mtime
                   for root, _, files in os.walk(folder)
                   for f in files if f.endswith(".bn"))
  return seconds, written[0] - start_wall, written[-1] - written[0]


def _linked_copies(image_dir: str, copies: int, folder: str) -> str:
  """folder/<class>/<k>_<name>: `copies` links to each photo of image_dir."""
  for name in sorted(os.listdir(image_dir)):
    source = os.path.join(image_dir, name)
    if name.startswith(".") or not os.path.isdir(source):
      continue
    os.makedirs(os.path.join(folder, name))
    for f in sorted(os.listdir(source)):
      if not f.startswith("."):
        for k in range(copies):
          os.symlink(os.path.realpath(os.path.join(source, f)),
                     os.path.join(folder, name, f"{k}_{f}"))
  return folder


def _cached_vectors(folder):
  """The bottleneck sidecars below folder (Beam workers also write photo
  statistics beside them: not bottlenecks, left out)."""
  import cache  # pylint: disable=g-import-not-at-top
  found = {}
  for root, _, files in os.walk(folder):
    for f in files:
      if f.endswith(".bn") and ".photostats" not in f:
        found[os.path.relpath(os.path.join(root, f), folder)] = (
            cache.read_vector(os.path.join(root, f)))
  return found


def main(_):
  import numpy as np  # pylint: disable=g-import-not-at-top
  image_dir = FLAGS.image_dir or os.path.join(common.shared_dir(), "datasets",
                                              "cats_dogs_small")
  _, model_flags = common.model_choice(FLAGS.graph)
  model_flags = model_flags + FLAGS.model_flags
  work = tempfile.mkdtemp(prefix="retrain_beam_bench_")
  if FLAGS.max_images:
    image_dir = common.subset_images(image_dir, FLAGS.max_images,
                                     os.path.join(work, "photos"))
  if FLAGS.copies > 1:
    image_dir = _linked_copies(image_dir, FLAGS.copies,
                               os.path.join(work, "copies"))
  images = sum(len([f for f in files if not f.startswith(".")])
               for root, _, files in os.walk(image_dir) if root != image_dir)
  rows, vectors, rates = [], {}, {}
  ways = [w for w in WAYS if FLAGS.one_worker or "1 worker" not in w[0]]
  cluster = None
  if FLAGS.dask:
    cluster = _dask_cluster()
    ways += [DASK_WAYS[0], (DASK_WAYS[1][0], DASK_WAYS[1][1] + [
        f"--beam_options=--dask_client_address={cluster.scheduler_address}"])]
  runs = {name: [] for name, _ in ways}
  # Ways take turns, so that a drift of this shared machine's speed weighs
  # on all of them; each way's median run counts (the fastest would be the
  # luckiest: in process, the batch size chosen by timing varies).
  for repeat in range(FLAGS.repeats):
    for name, extra in ways:
      runs[name].append(_run(image_dir, model_flags, extra, work))
      if repeat == 0:
        vectors[name] = _cached_vectors(os.path.join(work, "cache"))
      print(name, [f"{x:.2f}" for x in runs[name][-1]], flush=True)
  if cluster is not None:
    cluster.close()
  for name, _ in ways:
    seconds, start_up, extraction = sorted(runs[name])[len(runs[name]) // 2]
    rates[name] = (images - 1) / extraction
    rows.append([name, f"{seconds:.1f}", f"{images / seconds:.0f}",
                 f"{start_up:.1f}", f"{rates[name]:.0f}"])
  base, base_rate = float(rows[0][1]), rates[WAYS[0][0]]
  for row in rows:
    row += [f"{100 * base / float(row[1]):.0f}%",
            f"{100 * rates[row[0]] / base_rate:.0f}%",
            f"{1000 * (float(row[1]) - base) / images:+.2f}"]
  reference = vectors[WAYS[0][0]]
  for name, found in vectors.items():
    assert sorted(found) == sorted(reference), name
    worst = max(float(np.abs(found[k] - reference[k]).max())
                for k in reference)
    print(f"{name}: {len(found)} vectors, largest difference from in "
          f"process {worst:g}")
  print(f"\n{images} images, {' '.join(model_flags)}, whole command "
        "(python -m retrain --only_bottlenecks, cold cache), median of "
        f"{FLAGS.repeats}, the ways taking turns; {os.cpu_count()} cores; "
        "start-up: to the first vector written; extraction: first to last "
        "vector written")
  print(common.table(rows, [
      "way", "seconds", "images/s", "start-up s", "extraction images/s",
      "of in-process (whole command)", "of in-process (extraction)",
      "Beam overhead ms/image"]))
  shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
