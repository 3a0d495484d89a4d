"""The audit (retrain/audit/): its cost and how well it finds what was
planted, side by side with cleanlab on the same out-of-fold probabilities.

  python benchmarks/audit.py [--model=mobilenet_v1_025_128] [--work_dir=DIR]
      [--sizes=2000,20000,100000] [--warm_images=2000]

1. Time and peak memory of the audit (neighbours, duplicates, outliers,
   out-of-fold layers) at each size, each in a fresh process: the first
   size's vectors are real (the planted dev flowers, repeated with noise),
   larger ones synthetic (real vectors, scaled and jittered).
2. The planted folder of tests/planted.py: near-copy recall and precision,
   and the likely label errors against cleanlab's find_label_issues (pip
   install cleanlab; the benchmark's own dependency) on the same
   probabilities: precision and recall at the top k, and our recall at
   cleanlab's precision.
3. A warm run (every bottleneck cached) on --warm_images of the cats/dogs
   photos, with and without the audit, side by side.
4. Photo quality (--photo_quality): tests/planted.py's plant_quality on the
   dev flowers (400 clean photos, 44 planted bad ones: blurry, dark, light,
   grayscale, odd_size, odd_aspect_ratio, low_information) at the model's
   size: recall and precision of each kind against what was planted,
   beside CleanVision (pip install cleanvision; the benchmark's own
   dependency) with its defaults on the same folder, and each one's time;
   the clean photos each flags, by kind; the findings on the whole dev
   flowers and cats and dogs; and extraction with and without the
   statistics, side by side in one process (alternating, best of 3).

Needs Pillow (tests/planted.py). Prints tables; asserts nothing.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import app, flags  # pylint: disable=g-import-not-at-top

flags.DEFINE_string("model", "mobilenet_v1_025_128", "A ../shared model.")
flags.DEFINE_string("work_dir", "", "Cache and folders (kept); default: a "
                    "temporary folder.")
flags.DEFINE_list("sizes", ["2000", "20000", "100000"], "Vectors audited.")
flags.DEFINE_integer("warm_images", 2000, "Cats/dogs photos of the warm run "
                     "(0: skip).")
flags.DEFINE_bool("photo_quality", True, "Run part 4 (photo quality).")
flags.DEFINE_bool("only_photo_quality", False, "Run part 4 only.")
flags.DEFINE_integer("child_size", 0, "Internal: audit this many vectors.")
flags.DEFINE_string("child_vectors", "", "Internal: real vectors (.npz).")
FLAGS = flags.FLAGS


def _planted(work: str):
  """(Planted, RunConfig, ModelOptions) with every bottleneck cached."""
  import glob  # pylint: disable=g-import-not-at-top
  from retrain import pipeline  # pylint: disable=g-import-not-at-top
  from retrain.config import RunConfig  # pylint: disable=g-import-not-at-top
  from tests import planted  # pylint: disable=g-import-not-at-top
  shared = common.shared_dir()
  root = os.path.join(work, "planted")
  if os.path.isdir(root):
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(root)
  folder = planted.plant(
      os.path.join(shared, "datasets", "flower_photos_dev"), root,
      sorted(glob.glob(os.path.join(shared, "models", "test_images",
                                    "*.[jp]*g"))))
  model = common.shared_model_options(FLAGS.model)
  config = RunConfig(image_dir=root,
                     bottleneck_dir=os.path.join(work, "cache"),
                     output_graph=os.path.join(work, "out", "g.pb"))
  pipeline.cache_bottlenecks(config, model_options=model)
  return folder, config, model


def _vectors(config, model):
  """(x float32 [n, D], y, paths, set names) of the cached originals."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain import pipeline  # pylint: disable=g-import-not-at-top
  from retrain.audit import findings  # pylint: disable=g-import-not-at-top
  inputs = pipeline.load_inputs(config, model)
  sets, _ = pipeline.bottlenecks.cached_bottlenecks(
      inputs.image_lists, inputs.fx, config.bottleneck_dir)
  data, names = findings.originals(sets, pipeline.bottlenecks.AUGMENTED_MARK)
  return (data.take(np.arange(len(data))), data.y, list(data.paths), names,
          inputs.labels)


def child(size: int, vectors: str) -> None:
  """Audits `size` vectors made from the real ones; prints one JSON line."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain import tfimport  # pylint: disable=g-import-not-at-top
  tfimport.quiet_tensorflow()
  from retrain.audit import findings  # pylint: disable=g-import-not-at-top
  from retrain.config import HParams  # pylint: disable=g-import-not-at-top
  from retrain.features.sets import LabeledBottlenecks  # pylint: disable=g-import-not-at-top
  real = np.load(vectors)
  rng = np.random.default_rng(0)
  pick = rng.integers(len(real["x"]), size=size)
  x = real["x"][pick] * rng.lognormal(0, 0.3, size=(size, 1)).astype(
      np.float32)
  x = np.maximum(x + rng.normal(0, 0.15, x.shape).astype(np.float32) *
                 x.std(), 0)
  x[:len(real["x"])] = real["x"][:size]
  y = real["y"][pick]
  y[:len(real["y"])] = real["y"][:size]
  data = LabeledBottlenecks(x.astype(np.float32), y,
                            [f"img{i}.jpg" for i in range(size)])
  labels = [f"class{i}" for i in range(int(y.max()) + 1)]
  before = common.peak_rss_mb()
  start = time.monotonic()
  audit = findings.run(data, ["training"] * size, labels, HParams())
  print(json.dumps(dict(size=size, seconds=time.monotonic() - start,
                        peak_mb=common.peak_rss_mb(), before_mb=before,
                        counts=audit.counts())))


def cost(vectors: str) -> None:
  rows = []
  for size in [int(s) for s in FLAGS.sizes]:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), f"--child_size={size}",
         f"--child_vectors={vectors}"], capture_output=True, text=True,
        check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    rows.append([size, f"{got['seconds']:.2f}",
                 f"{got['seconds'] / size * 10000:.2f}",
                 f"{got['peak_mb']:.0f}", f"{got['before_mb']:.0f}"])
  print(common.table(rows, ["vectors", "audit s", "s per 10 000",
                            "peak MB", "MB before"]))


def quality(folder, x, y, paths, labels) -> None:
  """Planted near copies and label errors; ours vs cleanlab."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain.audit import duplicates, labels as audit_labels, neighbours  # pylint: disable=g-import-not-at-top
  from retrain.config import HParams  # pylint: disable=g-import-not-at-top
  index = {p: i for i, p in enumerate(paths)}
  groups = duplicates.groups(paths, duplicates.near_pairs(
      neighbours.nearest(x)))
  member = [set(g.members) for g in groups]
  rows = []
  for kind in ("bytes", "reencoded", "resized", "cropped", "flipped"):
    pairs = folder.pairs(kind)
    found = sum(any({index[a], index[b]} <= m for m in member)
                for a, b in pairs)
    rows.append([kind, f"{found}/{len(pairs)}"])
  planted_rows = {index[p] for a, b, _ in folder.copies for p in (a, b)}
  extra = [g for g in member if not g & planted_rows]
  print(common.table(rows, ["planted copies", "found"]))
  print(f"groups with no planted copy: {len(extra)} of {len(groups)}\n")

  probabilities = audit_labels.out_of_fold(x, y, len(labels), HParams())
  ours = list(audit_labels.confident_learning(probabilities, y).index)
  wrong = {index[p] for p in list(folder.mislabeled) + folder.cross_class}
  try:
    from cleanlab.filter import find_label_issues  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("cleanlab is not installed (pip install cleanlab): ours only")
    find_label_issues = None
  lists = {"retrain": ours}
  if find_label_issues is not None:
    lists["cleanlab"] = list(find_label_issues(
        y, probabilities, return_indices_ranked_by="self_confidence"))

  def pr(ranked, k):
    top = ranked[:k]
    hits = len(wrong & set(top))
    return hits / max(len(top), 1), hits / len(wrong)

  rows = []
  for name, ranked in lists.items():
    cells = [name, len(ranked)]
    for k in (10, 25, len(wrong), len(ranked)):
      p, r = pr(ranked, k)
      cells.append(f"{p:.2f} / {r:.2f}")
    rows.append(cells)
  print(common.table(rows, ["label errors", "listed", "P/R top 10",
                            "P/R top 25", f"P/R top {len(wrong)}",
                            "P/R all listed"]))
  if "cleanlab" in lists:
    def recall_at(ranked, precision):  # The most recall at that precision.
      return max((pr(ranked, k)[1] for k in range(1, len(ranked) + 1)
                  if pr(ranked, k)[0] >= precision), default=0.0)
    print()
    for who in lists:
      p, _ = pr(lists[who], len(lists[who]))
      print(f"recall at {who}'s precision {p:.2f}: " + ", ".join(
          f"{name} {recall_at(ranked, p):.2f}"
          for name, ranked in lists.items()))
    print(f"({len(wrong)} planted: {len(folder.mislabeled)} moved, "
          f"{len(folder.cross_class)} copies in another class)")
  print()


def warm(work: str) -> None:
  """A warm run with and without the audit, side by side."""
  shared = common.shared_dir()
  folder = os.path.join(work, f"cats_dogs_{FLAGS.warm_images}")
  if not os.path.isdir(folder):
    common.subset_images(os.path.join(shared, "datasets", "cats_dogs_small"),
                         FLAGS.warm_images, folder)
  graph = os.path.join(shared, "models", "mobilenet_v1_025_128",
                       "frozen_graph.pb")
  base = [sys.executable, "-m", "retrain", f"--image_dir={folder}",
          f"--graph={graph}", f"--bottleneck_dir={work}/warm_cache",
          f"--output_graph={work}/warm/g.pb",
          f"--output_labels={work}/warm/l.txt", "--summaries_dir="]
  env = dict(os.environ, PYTHONPATH=common.REPO)
  subprocess.run(base, check=True, capture_output=True, env=env)  # Fill.
  import shutil  # pylint: disable=g-import-not-at-top
  times = {"noaudit": [], "audit": [], "audit, not kept": []}
  for _ in range(2):
    for way in times:
      if way == "audit, not kept":  # As after a change: made again.
        shutil.rmtree(f"{work}/warm_cache/.audit", ignore_errors=True)
      start = time.monotonic()
      subprocess.run(base + ["--noaudit" if way == "noaudit" else "--audit"],
                     check=True, capture_output=True, env=env)
      times[way].append(time.monotonic() - start)
  n, a, c = (min(times[w]) for w in times)
  print(common.table([[FLAGS.warm_images, f"{n:.1f}",
                       f"{a:.1f} ({(a / n - 1) * 100:+.0f}%)",
                       f"{c:.1f} ({(c / n - 1) * 100:+.0f}%)"]],
                     ["photos", "warm run --noaudit s",
                      "warm run (audit kept in the cache) s",
                      "warm run, audit made again s"]))


def _quality_findings(folder: str, work: str, stats: bool = True):
  """retrain on `folder` from a fresh cache: ({path: kinds} of the
  photo-quality findings (None without stats), seconds of extraction,
  seconds of storing the statistics)."""
  import shutil  # pylint: disable=g-import-not-at-top
  from retrain import pipeline  # pylint: disable=g-import-not-at-top
  from retrain.audit import quality  # pylint: disable=g-import-not-at-top
  from retrain.config import RunConfig  # pylint: disable=g-import-not-at-top
  from retrain.features import bottlenecks  # pylint: disable=g-import-not-at-top
  from retrain.features.model import load_feature_extractor  # pylint: disable=g-import-not-at-top
  cache_dir = os.path.join(work, "quality_cache")
  shutil.rmtree(cache_dir, ignore_errors=True)
  config = RunConfig(image_dir=folder, bottleneck_dir=cache_dir,
                     summaries_dir="", checkpoint_path="")
  model = common.shared_model_options(FLAGS.model)
  fx = load_feature_extractor(model, cache_dir)
  lists = pipeline.images.list_images(folder, 10, 10)
  start = time.perf_counter()
  decoded = {} if stats else None
  bottlenecks.compute_bottlenecks(lists, fx, config, stats=decoded)
  extraction = time.perf_counter() - start
  if not stats:
    return None, extraction, 0.0
  start = time.perf_counter()
  found = bottlenecks.photo_statistics(lists, fx, config, decoded)
  storing = time.perf_counter() - start
  out = {}
  for f in quality.find(found.values, fx.input_size):
    out.setdefault(found.paths[f.index], set()).add(f.issue)
  return out, extraction, storing


def _cleanvision(folder: str):
  """({path: kinds} CleanVision flags with its defaults, seconds), or
  (None, 0) where it is not installed."""
  try:
    from cleanvision import Imagelab  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None, 0.0
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  from retrain.audit import quality  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(
      io.StringIO()):
    lab = Imagelab(data_path=folder)
    lab.find_issues({k: {} for k in quality.KINDS})
  seconds = time.perf_counter() - start
  out = {}
  for kind in quality.KINDS:
    for path in lab.issues.index[lab.issues[f"is_{kind}_issue"]]:
      out.setdefault(os.path.abspath(path), set()).add(kind)
  return out, seconds


def photo_quality(work: str) -> None:
  """Part 4 (see the module docstring)."""
  from retrain.audit import quality  # pylint: disable=g-import-not-at-top
  from tests import planted  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  shared = common.shared_dir()
  root = os.path.join(work, "planted_quality")
  shutil.rmtree(root, ignore_errors=True)
  folder = planted.plant_quality(
      os.path.join(shared, "datasets", "flower_photos_dev"), root,
      clean_per_class=80)
  truth = {os.path.abspath(p): k for p, k in folder.bad.items()}
  ours, _, _ = _quality_findings(root, work)
  theirs, their_seconds = _cleanvision(root)
  ours = {os.path.abspath(p): k for p, k in ours.items()}
  rows = []
  clean_flagged = {}
  for kind in quality.KINDS:
    planted_paths = {p for p, k in truth.items() if k == kind}
    row = [kind, str(len(planted_paths))]
    for found in (ours, theirs):
      if found is None:
        row += ["-", "-"]
        continue
      flagged = {p for p, kinds in found.items() if kind in kinds}
      hit = len(flagged & planted_paths)
      row += [f"{hit / len(planted_paths):.2f} ({hit})",
              f"{hit / len(flagged):.2f} ({len(flagged)})" if flagged
              else "- (0)"]
    rows.append(row)
    clean_flagged[kind] = sorted(
        os.path.basename(p) for p, kinds in ours.items()
        if kind in kinds and p not in truth)
  print("Photo quality: 400 clean dev flowers + 44 planted bad ones "
        f"({FLAGS.model}'s input size); recall and precision against what "
        "was planted (flagged count)")
  print(common.table(rows, ["kind", "planted", "retrain recall",
                            "retrain precision", "CleanVision recall",
                            "CleanVision precision"]))
  print("CleanVision: " + (f"{their_seconds:.1f} s (reads and decodes every "
                           "photo again)" if theirs is not None
                           else "not installed"))
  print("Clean photos retrain flags, by kind: " + json.dumps(
      {k: v for k, v in clean_flagged.items() if v}))
  counts = []
  for name in ("flower_photos_dev", "cats_dogs_small"):
    found, _, _ = _quality_findings(
        os.path.join(shared, "datasets", name), work)
    by_kind = {k: sum(k in v for v in found.values()) for k in quality.KINDS}
    counts.append([name, str(sum(len(v) > 0 for v in found.values()))] +
                  [str(by_kind[k]) for k in quality.KINDS])
  print("\nFindings on the shared sets as they are")
  print(common.table(counts, ["set", "photos flagged", *quality.KINDS]))
  # Extraction with and without the statistics, alternating.
  times = {True: [], False: []}
  storing = []
  for _ in range(3):
    for stats in (False, True):
      _, seconds, stored = _quality_findings(root, work, stats)
      times[stats].append(seconds)
      if stats:
        storing.append(stored)
  best = {k: min(v) for k, v in times.items()}
  print("\nExtraction of the 444 photos from a fresh cache, best of 3 "
        f"alternating: without statistics {best[False]:.2f} s, with "
        f"{best[True]:.2f} s, ratio {best[True] / best[False]:.3f}; storing "
        f"the statistics in the cache afterwards {min(storing):.2f} s")


def main(_):
  if FLAGS.child_size:
    child(FLAGS.child_size, FLAGS.child_vectors)
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain import tfimport  # pylint: disable=g-import-not-at-top
  tfimport.quiet_tensorflow()
  work = FLAGS.work_dir or tempfile.mkdtemp(prefix="audit_bench_")
  os.makedirs(work, exist_ok=True)
  print(f"model {FLAGS.model}; machine: {os.cpu_count()} cores\n")
  if FLAGS.photo_quality or FLAGS.only_photo_quality:
    photo_quality(work)
    if FLAGS.only_photo_quality:
      return
  folder, config, model = _planted(work)
  x, y, paths, _, labels = _vectors(config, model)
  quality(folder, x, y, paths, labels)
  vectors = os.path.join(work, "vectors.npz")
  np.savez(vectors, x=x, y=y)
  cost(vectors)
  if FLAGS.warm_images:
    print()
    warm(work)


if __name__ == "__main__":
  app.run(main)
