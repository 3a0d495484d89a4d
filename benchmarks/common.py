"""Helpers shared by the benchmark scripts (no timing assertions: they print)."""

import hashlib
import os
import resource
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)


def shared_dir() -> str:
  """../shared beside the repository, or $RETRAIN_SHARED_DIR."""
  return os.environ.get("RETRAIN_SHARED_DIR",
                        os.path.join(os.path.dirname(REPO), "shared"))


def peak_rss_mb() -> float:
  """Peak resident memory of this process so far, in MB: the high-water
  mark of its own memory (VmHWM), not ru_maxrss, which Linux carries over
  from a parent process across fork and exec."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(rows, header) -> str:
  """A Markdown table."""
  widths = [max(len(str(r[i])) for r in [header] + rows)
            for i in range(len(header))]
  def line(r):
    return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
  return "\n".join([line(header),
                    "|" + "|".join("-" * (w + 2) for w in widths) + "|"] +
                   [line(r) for r in rows])


def dev_images(image_dir=None) -> str:
  """The image folder to measure: the flag's, or the shared dev flowers."""
  return image_dir or os.path.join(shared_dir(), "datasets",
                                   "flower_photos_dev")


def subset_images(image_dir: str, count: int, folder: str) -> str:
  """A folder of links to `count` photos of image_dir, spread evenly over its
  class folders (sorted names, so the same photos every time), each class
  with at least one validation and one test photo both by retrain's split
  and by the classic tool's (which hashes the full path, and fails on a
  class without)."""
  from retrain.data import images  # pylint: disable=g-import-not-at-top
  classes = sorted(d for d in os.listdir(image_dir)
                   if os.path.isdir(os.path.join(image_dir, d)) and
                   not d.startswith("."))
  for k, name in enumerate(classes):
    files = sorted(f for f in os.listdir(os.path.join(image_dir, name))
                   if images.is_image_name(f) and not f.startswith("."))
    take = count // len(classes) + (k < count % len(classes))
    picked = []
    for rule in (lambda f: f,  # retrain: the name below the class folder.
                 lambda f: os.path.join(folder, name, f)):  # classic.
      for want in ("validation", "testing"):
        if not [f for f in picked
                if images.assign_category(rule(f), 10, 10) == want]:
          picked += [f for f in files
                     if images.assign_category(rule(f), 10, 10) == want][:1]
    picked += [f for f in files if f not in picked][:take - len(picked)]
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    for f in picked:
      os.symlink(os.path.join(os.path.abspath(image_dir), name, f),
                 os.path.join(folder, name, f))
  return folder


def model_choice(graph=None, tfhub_module=None):
  """(ModelOptions, the matching command-line flags) for the model to use;
  for several comma-separated graphs, a tuple of ModelOptions.

  Default: the shared MobileNet v1 0.25/128 frozen graph.
  """
  from retrain.config import ModelOptions  # pylint: disable=g-import-not-at-top
  if graph and "," in graph:  # Several models: one classifier on all.
    chosen = [model_choice(g) for g in graph.split(",")]
    keys = sorted({f.split("=")[0] for _, flags in chosen
                   for f in flags[1:]})
    def value(options, key):
      v = getattr(options, key[2:])
      return "" if v is None else (f"{v[0]}x{v[1]}" if isinstance(v, tuple)
                                   else str(v))
    return (tuple(o for o, _ in chosen), [f"--graph={graph}"] + [
        f"{k}={','.join(value(o, k) for o, _ in chosen)}" for k in keys])
  if tfhub_module:
    return (ModelOptions(tfhub_module=tfhub_module),
            [f"--tfhub_module={tfhub_module}"])
  graph = graph or os.path.join(shared_dir(), "models",
                                "mobilenet_v1_025_128", "frozen_graph.pb")
  # A shared model whose tensors retrain does not recognise: its README's.
  tensors = MODEL_TENSORS.get(os.path.basename(os.path.dirname(
      os.path.abspath(graph))), {})
  flags = [f"--graph={graph}"] + [
      f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
      for k, v in tensors.items()]
  return ModelOptions(graph=graph, tfhub_module="", **tensors), flags


def define_model_flags(tfhub: bool = True) -> None:
  """--image_dir, --graph (and --tfhub_module): what the benchmarks measure."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("image_dir", None, "Photo folder (default: shared dev "
                      "flowers).")
  flags.DEFINE_string("graph", None, "Frozen graph (default: shared "
                      "mobilenet_v1_025_128).")
  if tfhub:
    flags.DEFINE_string("tfhub_module", None, "TF-Hub module folder instead.")


# k-fold cross-validation on a shared data set (fine_tune.py,
# head_quality.py): of the photos outside the test fold, this share
# validates (retrain's own hash rule), the others train.
VALIDATION_PERCENTAGE = 12.5


def fold_of(name: str, folds: int) -> int:
  """The test fold of a photo: a stable hash of its name."""
  return int(hashlib.sha1(name.encode()).hexdigest(), 16) % folds


def fold_lists(image_dir: str, fold: int, folds: int):
  """images.ImageLists with fold `fold` as the test set."""
  from retrain.data import images  # pylint: disable=g-import-not-at-top
  found = images.list_images(image_dir, 0, 0)
  classes = []
  for c in found.classes:
    every = c.training + c.validation + c.testing
    test = tuple(f for f in every if fold_of(f, folds) == fold)
    rest = [f for f in every if fold_of(f, folds) != fold]
    val = tuple(f for f in rest if images.assign_category(
        f, 0, VALIDATION_PERCENTAGE) == images.VALIDATION)
    train = tuple(f for f in rest if f not in val)
    classes.append(images.ClassImages(c.label, c.dir_name, train, val, test))
  return images.ImageLists(found.image_dir, tuple(classes))


# Frozen graphs of ../shared/models whose tensor names or scaling retrain
# does not recognise by itself (their READMEs give these).
MODEL_TENSORS = {
    "mobilenet_v1_075_224": dict(
        input_tensor="input:0", bottleneck_tensor="feature_vector:0",
        input_mean=127.5, input_std=127.5),
    "efficientnet_lite0": dict(
        input_tensor="input:0", bottleneck_tensor="feature_vector:0",
        input_mean=127.0, input_std=128.0),
    "efficientnet_lite2": dict(
        input_tensor="input:0", bottleneck_tensor="feature_vector:0",
        input_size=(260, 260), input_mean=127.0, input_std=128.0),
}


def shared_model_options(name: str):
  """ModelOptions for the frozen graph of ../shared/models/<name>."""
  from retrain.config import ModelOptions  # pylint: disable=g-import-not-at-top
  return ModelOptions(graph=os.path.join(shared_dir(), "models", name,
                                         "frozen_graph.pb"), tfhub_module="",
                      **MODEL_TENSORS.get(name, {}))
