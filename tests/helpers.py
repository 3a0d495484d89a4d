"""Helpers shared by the end-to-end tests."""

import json
import os
import subprocess
import sys

import numpy as np

from retrain.config import RunConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_config(tmp, image_dir, **overrides) -> RunConfig:
  """A RunConfig whose every output lies under `tmp`."""
  tmp = str(tmp)
  values = dict(
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


def run_cli(args, module="retrain", cwd=None, timeout=600):
  """Runs `python -m MODULE ARGS`; returns the CompletedProcess."""
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
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
