"""Helpers shared by the end-to-end tests."""

import json
import os
import subprocess
import sys

import numpy as np

from retrain.config import RunConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_config(tmp, image_dir, **overrides) -> RunConfig:
  """A RunConfig whose every output lies under `tmp`; without the audit
  unless asked (audit=True): tests/test_audit.py tests it, the command-line
  tests run it as users do."""
  tmp = str(tmp)
  values = dict(audit=False,
      image_dir=image_dir, bottleneck_dir=os.path.join(tmp, "bottlenecks"),
      output_graph=os.path.join(tmp, "out", "graph.pb"),
      output_labels=os.path.join(tmp, "out", "labels.txt"),
      summaries_dir=os.path.join(tmp, "summaries"),
      saved_model_dir=os.path.join(tmp, "out", "saved_model"),
      checkpoint_path=os.path.join(tmp, "ckpt", "retrain"),
      intermediate_output_graphs_dir=os.path.join(tmp, "intermediate"))
  values.update(overrides)
  return RunConfig(**values)


def export_probabilities(kind, path, image_paths, tmp):
  """Probabilities from an export, computed in a fresh Python process."""
  images_json = os.path.join(str(tmp), "images.json")
  out = os.path.join(str(tmp), f"probs_{kind}.npz")
  with open(images_json, "w") as f:
    json.dump(list(image_paths), f)
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "tests", "export_check.py"), kind,
       path, images_json, out], capture_output=True, text=True, cwd=str(tmp),
      env=dict(os.environ, PYTHONPATH=""))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(out))


def run_cli(args, module="retrain", cwd=None, timeout=600, env_updates=None):
  """Runs `python -m MODULE ARGS`; returns the CompletedProcess.

  TF_CPP_MIN_LOG_LEVEL is unset unless `env_updates` sets it.
  """
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  env.update(env_updates or {})
  return subprocess.run([sys.executable, "-m", module, *args],
                        capture_output=True, text=True, cwd=cwd or REPO,
                        env=env, timeout=timeout)


def files_under(root):
  """Every file below root, as relative paths."""
  found = set()
  for base, _, names in os.walk(root):
    for n in names:
      found.add(os.path.relpath(os.path.join(base, n), root))
  return found


# Python code that makes `import tensorflow` fail, then runs a module as
# __main__ with the remaining arguments: a device with LiteRT and no
# TensorFlow.
_WITHOUT_TENSORFLOW = (
    "import runpy, sys; sys.modules['tensorflow'] = None; "
    "module = sys.argv[1]; sys.argv = sys.argv[1:]; "
    "runpy.run_module(module, run_name='__main__', alter_sys=True)")


def run_without_tensorflow(args, module="retrain.label_image", cwd=None,
                           script=None):
  """Runs `python -m MODULE ARGS` (or `script`, a file) where importing
  TensorFlow fails; returns the CompletedProcess."""
  env = dict(os.environ, PYTHONPATH=REPO)
  if script:
    code = ("import runpy, sys; sys.modules['tensorflow'] = None; "
            f"runpy.run_path({script!r}, run_name='__main__')")
    argv = [sys.executable, "-c", code, *args]
  else:
    argv = [sys.executable, "-c", _WITHOUT_TENSORFLOW, module, *args]
  return subprocess.run(argv, capture_output=True, text=True,
                        cwd=cwd or REPO, env=env, timeout=600)


def chromium_dom(html_path, tmp):
  """The DOM of a page after it loaded in headless Chromium, with
  data-loaded-images on <body>: how many images decoded. None when Chromium
  is not installed (a failure under CI=true, where .ci/run installs it)."""
  import shutil  # pylint: disable=g-import-not-at-top
  browser = shutil.which("chromium") or shutil.which("chromium-browser")
  if not browser:
    return None
  probe = os.path.join(str(tmp), "probe.html")
  with open(html_path, encoding="utf-8") as f:
    page = f.read()
  # The report has no script; the probe adds one that counts decoded images.
  page = page.replace("</body>", (
      "<script>window.addEventListener('load', () => {"
      "document.body.dataset.loadedImages = [...document.images].filter("
      "i => i.complete && i.naturalWidth > 0).length;});</script></body>"))
  with open(probe, "w", encoding="utf-8") as f:
    f.write(page)
  proc = subprocess.run(
      [browser, "--headless", "--no-sandbox", "--disable-gpu",
       "--disable-quic", "--no-first-run", "--disable-background-networking",
       "--disable-component-update", "--disable-sync",
       f"--user-data-dir={os.path.join(str(tmp), 'chromium-profile')}",
       "--virtual-time-budget=5000", "--dump-dom", "file://" + probe],
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout


def require(module):
  """Imports an optional package the tests' extra installs: skipped where
  it is absent, except under CI=true (.ci/run installs it), where the
  import error fails the test."""
  import importlib  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  if os.environ.get("CI") == "true":
    return importlib.import_module(module)
  return pytest.importorskip(module, reason=f"{module} is not installed "
                             "(pip install '.[test]')")


def shared_mobilenet(shared):
  """ModelOptions of ../shared's small MobileNet v1 0.25/128 frozen graph."""
  from retrain.config import ModelOptions  # pylint: disable=g-import-not-at-top
  return ModelOptions(graph=os.path.join(
      shared, "models", "mobilenet_v1_025_128", "frozen_graph.pb"),
                      tfhub_module="")


def cached_vectors(root):
  """{sidecar path below root: vector} of every bottleneck cache file, each
  verified whole (the photo statistics Beam workers write beside them are
  left out)."""
  import cache  # pylint: disable=g-import-not-at-top
  out = {}
  for rel in files_under(root):
    if rel.endswith(cache.naming.SUFFIX) and ".photostats" not in rel:
      with open(os.path.join(root, rel), "rb") as f:
        cache.verify(f.read())
      out[rel] = cache.read_vector(os.path.join(root, rel))
  return out


def mediapipe_probabilities(tflite_path, image_paths, labels):
  """MediaPipe Tasks' ImageClassifier on a .tflite (its metadata only):
  (float32 [n, classes] in `labels` order, the class names it gave for
  each image). Skips without mediapipe (fails under CI=true)."""
  mp = require("mediapipe")
  from mediapipe.tasks.python import BaseOptions, vision  # pylint: disable=g-import-not-at-top
  options = vision.ImageClassifierOptions(
      base_options=BaseOptions(model_asset_path=tflite_path),
      max_results=len(labels))
  rows, names = [], []
  with vision.ImageClassifier.create_from_options(options) as classifier:
    for path in image_paths:
      categories = classifier.classify(
          mp.Image.create_from_file(path)).classifications[0].categories
      names.append({c.category_name for c in categories})
      score = {c.category_name: c.score for c in categories}
      rows.append([score[label] for label in labels])
  return np.array(rows, np.float32), names
