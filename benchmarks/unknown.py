"""Photos of nothing the classifier learned: which score tells them apart.

  python benchmarks/unknown.py [--models=mobilenet_v1_075_224]
      [--folds=5] [--accept=0.95] [--work_dir=DIR]

k-fold cross-validation on each shared data set as the known classes (the
folds of head_quality.py), the other shared data set's photos as unknown
(dev flowers known, cats and dogs unknown; and the reverse). In each fold a
softmax layer is fitted on the training photos (the exact optimum of
retrain's loss at weight decay 0.01, training/solver.py); each score's
threshold accepts --accept of the validation photos; then on the test
photos (known) and every unknown photo:

- AUROC of the score as an unknown detector,
- the share of unknown photos above the threshold ("rejected"),
- the share of known test photos above it.

Scores: 1 - the highest softmax probability; minus the log-sum-exp of the
logits; cosine distance to the nearest class mean; cosine distance to the
k-th nearest training photo (training/unknown.py), with all training photos
kept and with at most 500. And the unknown class as --unknown_label builds
it (training/unknown.fit_unknown: k = 5, at most --unknown_keep photos
kept, the threshold set on the classifier's answers so that --accept of
the validation photos keep a known class): the shares are of photos it
answers "unknown". Prints each fold as JSON, then the mean table.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

from absl import app, flags  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("models", ["mobilenet_v1_075_224"],
                  "Model folders of ../shared/models (A+B: several).")
flags.DEFINE_list("datasets", ["flower_photos_dev", "cats_dogs_small"],
                  "Data sets: each is known once, the others unknown.")
flags.DEFINE_integer("folds", 5, "Cross-validation folds.")
flags.DEFINE_float("accept", 0.95, "Share of validation photos accepted.")
flags.DEFINE_string("work_dir", "", "Cache folder (kept between runs).")
flags.DEFINE_integer("keep", 1000, "--unknown_keep of the built class.")
FLAGS = flags.FLAGS

DECAY = 0.01


def _vectors(fx, config, lists):
  """(x, y, set names) of every usable photo of the lists."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain import pipeline  # pylint: disable=g-import-not-at-top
  data = pipeline.compute_bottlenecks(pipeline.Inputs(lists, fx), config, 0)
  xs, ys, names = [], [], []
  for cat, s in data.sets.items():
    s = s.in_memory()
    xs.append(s.x)
    ys.append(s.y)
    names += [cat] * len(s)
  return np.concatenate(xs), np.concatenate(ys), np.array(names)


def scores(x, y, classes, known, unknown):
  """Each score's values on (known, unknown) photos, fitted on x, y."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain.training import solver, unknown as unknown_lib  # pylint: disable=g-import-not-at-top
  sol = solver.fit(x, y, classes, DECAY)
  out = {}

  def logits(v):
    return v @ sol.w + sol.b
  for name, fn in (
      ("1 - max softmax", lambda v: 1 - np.exp(
          solver.log_softmax(logits(v))).max(1)),
      ("- logsumexp", lambda v: -np.log(np.exp(
          logits(v) - logits(v).max(1, keepdims=True)).sum(1)) -
       logits(v).max(1))):
    out[name] = (fn(known), fn(unknown))
  means = unknown_lib.unit_rows(np.stack([x[y == c].mean(0)
                                          for c in range(classes)]))
  nearest_mean = lambda v: 1 - (unknown_lib.unit_rows(v) @ means.T).max(1)
  out["cosine to nearest class mean"] = (nearest_mean(known),
                                         nearest_mean(unknown))
  for k, limit in ((1, None), (5, None), (10, None), (5, 500)):
    score = unknown_lib.NeighbourScore.fit(x, y, limit or len(x), k)
    kept = f"at most {limit}" if limit else "all"
    out[f"cosine to nearest k={k} ({kept} kept)"] = (score(known),
                                                      score(unknown))
  return out


def built_class(x, y, validation, test, strange, classes):
  """The --unknown_label class fitted on (x, y): AUROC of its score, the
  shares of unknown and known test photos it answers "unknown"."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain.training import solver, unknown as unknown_lib  # pylint: disable=g-import-not-at-top
  sol = solver.fit(x, y, classes, DECAY)
  probs = lambda v: unknown_lib.layer_probabilities(v, sol.w, sol.b)
  fitted = unknown_lib.fit_unknown(x, y, validation, probs(validation),
                                   FLAGS.accept, FLAGS.keep)
  answered = lambda v: fitted.extend(probs(v), v).argmax(1) == classes
  return dict(auroc=unknown_lib.auroc(fitted.score(test),
                                      fitted.score(strange)),
              unknown_rejected=float(np.mean(answered(strange))),
              known_rejected=float(np.mean(answered(test))))


def main(_):
  import tempfile  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from retrain import tfimport  # pylint: disable=g-import-not-at-top
  from retrain.config import RunConfig  # pylint: disable=g-import-not-at-top
  from retrain.data import images  # pylint: disable=g-import-not-at-top
  from retrain.features.model import load_feature_extractor  # pylint: disable=g-import-not-at-top
  from retrain.training import unknown as unknown_lib  # pylint: disable=g-import-not-at-top
  tfimport.quiet_tensorflow()
  work = FLAGS.work_dir or tempfile.mkdtemp(prefix="retrain_unknown_")
  cache_dir = os.path.join(work, "cache")
  rows = []
  for model in FLAGS.models:
    fx = load_feature_extractor([common.shared_model_options(m)
                                 for m in model.split("+")], cache_dir)
    for known_set in FLAGS.datasets:
      def config(name):
        return RunConfig(
            image_dir=os.path.join(common.shared_dir(), "datasets", name),
            bottleneck_dir=cache_dir, summaries_dir="", checkpoint_path="")
      others = [d for d in FLAGS.datasets if d != known_set]
      strange = np.concatenate([
          _vectors(fx, config(d), images.list_images(
              config(d).image_dir, 10, 10))[0] for d in others])
      results = {}
      start = time.monotonic()
      for k in range(FLAGS.folds):
        x, y, names = _vectors(fx, config(known_set), common.fold_lists(
            config(known_set).image_dir, k, FLAGS.folds))
        train = names == images.TRAINING
        validation = names == images.VALIDATION
        test = names == images.TESTING
        classes = int(y.max()) + 1
        for name, (known, unknown) in scores(
            x[train], y[train], classes,
            np.concatenate([x[validation], x[test]]), strange).items():
          val, tst = known[:validation.sum()], known[validation.sum():]
          t = unknown_lib.threshold(val, FLAGS.accept)
          row = dict(auroc=unknown_lib.auroc(tst, unknown),
                     unknown_rejected=float(np.mean(unknown > t)),
                     known_rejected=float(np.mean(tst > t)))
          results.setdefault(name, []).append(row)
          print(json.dumps(dict(model=model, known=known_set, fold=k,
                                score=name, **row)), flush=True)
        name = "the unknown class as built (--unknown_label)"
        row = built_class(x[train], y[train], x[validation], x[test],
                          strange, classes)
        results.setdefault(name, []).append(row)
        print(json.dumps(dict(model=model, known=known_set, fold=k,
                              score=name, **row)), flush=True)
      seconds = (time.monotonic() - start) / FLAGS.folds
      for name, folds in results.items():
        mean = lambda key: np.mean([f[key] for f in folds])  # pylint: disable=cell-var-from-loop
        rows.append([model, known_set, "+".join(others), str(len(strange)),
                     name, f"{mean('auroc'):.3f}",
                     f"{100 * mean('unknown_rejected'):.1f}",
                     f"{100 * mean('known_rejected'):.1f}",
                     f"{seconds:.1f}"])
  print(f"\n{FLAGS.folds}-fold cross-validation; threshold accepting "
        f"{100 * FLAGS.accept:g}% of the validation photos; "
        f"{os.cpu_count()} cores")
  print(common.table(rows, [
      "model", "known", "unknown", "unknown photos", "score", "AUROC",
      "unknown rejected %", "known test rejected %", "seconds per fold"]))


if __name__ == "__main__":
  app.run(main)
