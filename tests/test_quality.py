"""Photo quality in the audit: statistics made while each photo is decoded
for its bottleneck, kept in the cache; findings (blurry, dark, light,
grayscale, odd_size, odd_aspect_ratio, low_information) in audit.json, the
log, report.html and --exclude_from_training.

The planted folder: 400 dev flowers and 44 bad versions of other dev
flowers (tests/planted.plant_quality), MobileNet v1 0.25/128.
"""

import json
import os

import numpy as np
import pytest

from retrain import pipeline
from retrain.audit import quality
from retrain.config import HParams
from retrain.data import photo_stats
from retrain.features import extract
from tests import helpers
from tests import planted as planting

STEPS = HParams(how_many_training_steps=100)
# The clean dev flowers each kind flags (measured, looked at): 8 black and
# white photos (grayscale), a dandelion on black (dark), one burnt-out
# white daisy (light). No other clean photo may be flagged.
CLEAN_FLAGGED = {"grayscale": 8, "dark": 1, "light": 1}
# At least this many of each kind's planted photos are found (of 6; of 8
# blurry): measured 5 of 6 light (the one missed: a burnt flower on a black
# background), every other one.
MIN_FOUND = {"light": 5}


@pytest.fixture(scope="module")
def folder(shared, tmp_path_factory):
  return planting.plant_quality(
      os.path.join(shared, "datasets", "flower_photos_dev"),
      str(tmp_path_factory.mktemp("quality") / "photos"), clean_per_class=80)


@pytest.fixture(scope="module")
def run(folder, shared, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("quality_run")
  config = helpers.run_config(tmp, folder.root, audit=True)
  result = pipeline.run(config, STEPS, helpers.shared_mobilenet(shared))
  with open(os.path.join(os.path.dirname(config.output_graph),
                         "audit.json")) as f:
    return config, result, json.load(f)


def test_each_kind_is_found_and_no_clean_photo_beyond_those_stated(
    folder, run):
  _, _, audit = run
  rows = audit["quality"]
  assert rows and all(set(r) == {"path", "label", "set", "issue", "score"}
                      for r in rows)
  for kind in quality.KINDS:
    flagged = {r["path"] for r in rows if r["issue"] == kind}
    planted = set(folder.of_kind(kind))
    found = len(flagged & planted)
    assert found >= MIN_FOUND.get(kind, len(planted)), (kind, found)
    clean = {p for p in flagged if p not in folder.bad}
    assert len(clean) <= CLEAN_FLAGGED.get(kind, 0), (kind, sorted(clean))
    assert not {p for p in flagged - planted if p in folder.bad} - {
        p for p in folder.bad if folder.bad[p] == "light"
        and kind == "low_information"}, kind
  assert audit["quality_counts"] == {
      k: sum(r["issue"] == k for r in rows) for k in quality.KINDS}
  assert set(audit["quality_thresholds"]) >= set(quality.KINDS)


def test_findings_are_worst_first_and_in_the_log_line_and_report(run):
  config, _, audit = run
  for kind in quality.KINDS:
    scores = [r["score"] for r in audit["quality"] if r["issue"] == kind]
    descending = kind in ("light", "odd_aspect_ratio")
    assert scores == sorted(scores, reverse=descending), kind
  with open(os.path.join(os.path.dirname(config.output_graph),
                         "report.html"), encoding="utf-8") as f:
    page = f.read()
  for kind in quality.KINDS:
    assert f"id=quality-{kind}" in page
  section = page[page.index("<div id=quality>"):]
  shown = sum(min(n, 12) for n in audit["quality_counts"].values())
  assert section.count("<img") >= shown


def test_the_log_line_counts_them(run, shared, tmp_path):
  """The audit's log line (Audit.summary, what a run logs)."""
  config, _, audit = run
  line = pipeline.audit_cache(
      config, model_options=helpers.shared_mobilenet(shared),
      output_dir=str(tmp_path)).summary()
  counts = audit["quality_counts"]
  assert "; photo quality: " in line, line
  assert f"{counts['blurry']} blurry, {counts['dark']} dark" in line, line
  assert f"{counts['low_information']} low information" in line, line


def test_a_warm_run_decodes_nothing(run, shared, monkeypatch):
  config, _, audit = run

  def refuse(*_):
    raise AssertionError("a warm run decoded a photo")
  monkeypatch.setattr(extract.ImageDecoder, "decode_sized", refuse)
  again = pipeline.run(config, STEPS, helpers.shared_mobilenet(shared))
  assert again.bottlenecks_computed == 0
  with open(os.path.join(os.path.dirname(config.output_graph),
                         "audit.json")) as f:
    assert json.load(f)["quality"] == audit["quality"]


def test_an_old_cache_gets_them_by_decoding_only(run, shared, tmp_path):
  """A cache from before the statistics (their index removed): the next
  run decodes the photos for them without running the CNN, and finds the
  same."""
  config, _, audit = run
  cache_copy = tmp_path / "cache"
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(config.bottleneck_dir, cache_copy)
  removed = [p for p in helpers.files_under(str(cache_copy))
             if ".photostats" in p]
  assert removed
  for p in removed:
    os.remove(os.path.join(cache_copy, p))
  old = config._replace(bottleneck_dir=str(cache_copy),
                        output_graph=str(tmp_path / "out" / "g.pb"),
                        output_labels=str(tmp_path / "out" / "l.txt"))
  result = pipeline.run(old, STEPS, helpers.shared_mobilenet(shared))
  assert result.bottlenecks_computed == 0
  with open(tmp_path / "out" / "audit.json") as f:
    assert json.load(f)["quality"] == audit["quality"]


def test_exclude_from_training_takes_them(run, shared, tmp_path):
  config, result, audit = run
  in_training = {r["path"] for r in audit["quality"]
                 if r["set"] == "training"}
  only_quality = dict(audit, label_errors=[], outliers=[],
                      duplicate_groups=[])
  path = tmp_path / "audit.json"
  path.write_text(json.dumps(only_quality))
  excluded = pipeline.run(config._replace(
      exclude_from_training=str(path), audit=False,
      output_graph=str(tmp_path / "g.pb"),
      output_labels=str(tmp_path / "l.txt")), STEPS,
                          helpers.shared_mobilenet(shared))
  assert in_training
  assert excluded.set_sizes["training"] == (result.set_sizes["training"] -
                                            len(in_training))


def test_standalone_audit_reports_them_from_the_cache(run, shared, tmp_path):
  config, _, audit = run
  found = pipeline.audit_cache(config,
                               model_options=helpers.shared_mobilenet(shared),
                               output_dir=str(tmp_path))
  assert found.quality == audit["quality"]


def test_statistics_by_hand():
  """Made-up arrays with known answers."""
  flat = np.full((64, 64, 3), 100.0, np.float32)
  s = dict(zip(photo_stats.NAMES, photo_stats.compute(flat, (640, 480))))
  assert (s["width"], s["height"]) == (640, 480)
  assert s["brightness"] == pytest.approx(100 / 255, abs=1e-3)
  assert s["contrast"] == 0 and s["entropy"] == 0 and s["colour"] == 0
  halves = np.zeros((64, 64, 3), np.float32)
  halves[:, 32:] = 255  # Half black, half white: 1 bit.
  s = dict(zip(photo_stats.NAMES, photo_stats.compute(halves, (64, 64))))
  assert s["entropy"] == pytest.approx(1.0)
  assert s["contrast"] == pytest.approx(0.5, abs=1e-3)
  assert s["clipped"] == pytest.approx(1.0)  # Every lit pixel burnt out.
  red = np.zeros((64, 64, 3), np.float32)
  red[..., 0] = 200
  s = dict(zip(photo_stats.NAMES, photo_stats.compute(red, (64, 64))))
  assert s["colour"] == pytest.approx(200 / 255, abs=1e-6)
  rng = np.random.default_rng(0)
  sharp = rng.uniform(0, 255, (64, 64, 3)).astype(np.float32)
  soft = (sharp + np.roll(sharp, 1, 0) + np.roll(sharp, 1, 1) +
          np.roll(sharp, (1, 1), (0, 1))) / 4
  sharpness = photo_stats.INDEX["sharpness"]
  assert (photo_stats.compute(soft, (64, 64))[sharpness] <
          photo_stats.compute(sharp, (64, 64))[sharpness])


def test_sizes_and_shapes_relative_to_the_set():
  """A set of thumbnails is not odd; one thumbnail among photos is; so is
  a strip, not a portrait among landscapes."""
  base = np.tile(photo_stats.compute(
      np.random.default_rng(0).uniform(0, 255, (32, 32, 3)), (0, 0)),
                 (20, 1))
  w, h = photo_stats.INDEX["width"], photo_stats.INDEX["height"]
  base[:, w], base[:, h] = 400, 300
  base[0, [w, h]] = 32, 24  # A thumbnail.
  base[1, [w, h]] = 300, 400  # A portrait.
  base[2, [w, h]] = 400, 60  # A strip.
  found = {(f.index, f.issue) for f in quality.find(base, (224, 224))}
  assert (0, "odd_size") in found and (2, "odd_aspect_ratio") in found
  assert not {i for i, k in found if i == 1}
  thumbs = base.copy()
  thumbs[:, w], thumbs[:, h] = 32, 24
  assert not [f for f in quality.find(thumbs, (32, 32))
              if f.issue == "odd_size"]
