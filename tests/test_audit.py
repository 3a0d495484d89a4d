"""The audit (retrain/audit/): planted duplicates, leaks, label errors and
outliers in the dev flowers are found from the cached bottlenecks; nothing
on a clean folder but the one real near-duplicate it holds; acting on it
only when asked.

Numbers below were measured with ../shared's MobileNet v1 0.25/128 (the CI
model) on tests/planted.py's folder (seed 0): every planted pair found (52
of 52), one more group (a real burst pair of the dev photos), 24 of the 35
mislabeled or cross-class images among the likely label errors, 15 of them
in the top 25; the assertions leave a margin below those.
"""

import glob
import json
import os

import numpy as np
import pytest

from retrain import pipeline
from retrain.audit import findings, neighbours, outliers
from retrain.errors import UserError
from tests import helpers, planted as planting

# A real near-duplicate of the dev flowers (two shots of one sunflower
# moments apart, tests/planted.py copies it like every photo).
REAL_PAIR = ("15054753070_4f6ae0e763_m.jpg", "15054864508_0334b892be_m.jpg")


@pytest.fixture(scope="module")
def planted(shared, tmp_path_factory):
  """(Planted, model options, cache folder), every bottleneck cached."""
  root = tmp_path_factory.mktemp("audit")
  outliers = sorted(glob.glob(os.path.join(shared, "models", "test_images",
                                           "*.[jp]*g")))
  folder = planting.plant(os.path.join(shared, "datasets",
                                       "flower_photos_dev"),
                          str(root / "photos"), outliers)
  model = helpers.shared_mobilenet(shared)
  config = helpers.run_config(root, folder.root, saved_model_dir="",
                              summaries_dir="", audit=True)
  pipeline.cache_bottlenecks(config, model_options=model)
  return folder, model, config


@pytest.fixture(scope="module")
def audited(planted, tmp_path_factory):
  folder, model, config = planted
  out = tmp_path_factory.mktemp("audit_out")
  audit = pipeline.audit_cache(config, model_options=model,
                               output_dir=str(out))
  return audit, json.loads((out / "audit.json").read_text())


def _groups(report):
  return [{m["path"] for m in g["images"]} for g in report["duplicate_groups"]]


def test_every_byte_copy_is_found_as_identical(planted, audited):
  folder, _, _ = planted
  _, report = audited
  identical = [set(s) for g in report["duplicate_groups"]
               for s in g["identical"]]
  copies = folder.pairs("bytes")
  assert len(copies) == 15
  for original, copy in copies:
    assert any({original, copy} <= s for s in identical), copy


def test_near_copies_found_with_stated_precision_and_recall(planted,
                                                            audited):
  folder, _, _ = planted
  _, report = audited
  groups = _groups(report)
  near = [p for p in folder.copies if p[2] != "bytes"]
  found = [p for p in near if any({p[0], p[1]} <= g for g in groups)]
  recall = len(found) / len(near)
  planted_paths = {p for a, b, _ in folder.copies for p in (a, b)}
  unplanted = [g for g in groups if not g & planted_paths]
  precision = len(folder.copies) / (len(folder.copies) + len(unplanted))
  assert recall >= 0.9, (recall, [p for p in near if p not in found])
  assert precision >= 0.9, unplanted
  for group in report["duplicate_groups"]:
    paths = {m["path"] for m in group["images"]}
    if paths & set(folder.cross_class):
      assert not group["same_class"] and len(group["classes"]) == 2


def test_a_group_spanning_training_and_testing_is_a_leak(audited):
  audit, report = audited
  for group in report["duplicate_groups"]:
    sets = {m["set"] for m in group["images"]}
    assert group["leak"] == ({"training", "testing"} <= sets)
  leaked = {m["path"] for g in report["duplicate_groups"] if g["leak"]
            for m in g["images"] if m["set"] == "testing"}
  assert leaked and sorted(leaked) == report["leaked_test_images"]
  assert f"inflated by {len(leaked)} leaked images" in audit.summary()


def test_label_errors_beat_the_trained_models_own_mistakes(planted, audited,
                                                           tmp_path):
  folder, model, config = planted
  _, report = audited
  wrong = set(folder.mislabeled) | set(folder.cross_class)
  listed = [r["path"] for r in report["label_errors"]]
  k = len(folder.mislabeled)
  recall = len(wrong & set(listed)) / len(wrong)
  precision_at_k = len(wrong & set(listed[:k])) / k
  print(f"label errors: recall {recall:.2f} of {len(wrong)}, precision "
        f"at {k} {precision_at_k:.2f}")
  assert recall >= 0.6, recall
  assert precision_at_k >= 0.6, precision_at_k
  moved = [r for r in report["label_errors"] if r["path"] in
           folder.mislabeled]
  assert all(r["suggested"] != r["label"] for r in report["label_errors"])
  # Mostly, the class suggested is the one the photo was moved from.
  right = [r for r in moved if r["suggested"] == folder.mislabeled[r["path"]]]
  assert len(right) >= 0.6 * len(moved), (len(right), len(moved))
  # The rival list: images the trained layer gets wrong, most sure first,
  # over all images (it has seen its own training images).
  result = pipeline.run(config._replace(
      output_graph=str(tmp_path / "g.pb"),
      output_labels=str(tmp_path / "l.txt"), audit=False),
      model_options=model)
  sets, _ = pipeline.bottlenecks.cached_bottlenecks(
      pipeline.images.list_images(config.image_dir, 10, 10),
      pipeline.load_feature_extractor(model, config.bottleneck_dir),
      config.bottleneck_dir)
  data, _ = findings.originals(sets, "#augmented")
  logits = data.take(np.arange(len(data))) @ result.final_weights + (
      result.final_biases)
  probabilities = np.exp(logits - logits.max(1, keepdims=True))
  probabilities /= probabilities.sum(1, keepdims=True)
  predicted = probabilities.argmax(1)
  mistakes = np.flatnonzero(predicted != data.y)
  mistakes = mistakes[np.argsort(-probabilities[mistakes, predicted[
      mistakes]])]
  rival = [data.paths[i] for i in mistakes[:k]]
  rival_precision = len(wrong & set(rival)) / k
  assert precision_at_k > rival_precision, (precision_at_k, rival_precision)


def test_outliers_are_few_and_planted_ones_rank_far(planted, audited):
  folder, model, config = planted
  _, report = audited
  found = [r["path"] for r in report["outliers"]]
  assert len(found) <= 0.01 * report["images"] + 1
  assert all(r["z"] >= outliers.OUTLIER_Z for r in report["outliers"])
  # The photos of other things rank in the far tail of the score, though
  # MobileNet 0.25/128 puts odd flower photos as far (README, "Know your
  # data").
  inputs = pipeline.load_inputs(config, model)
  sets, _ = pipeline.bottlenecks.cached_bottlenecks(
      inputs.image_lists, inputs.fx, config.bottleneck_dir)
  data, _ = findings.originals(sets, "#augmented")
  z = outliers.scores(neighbours.nearest(data.take(np.arange(len(data)))))
  rank = {p: r for r, p in enumerate(np.array(data.paths)[np.argsort(-z)])}
  ranks = sorted(rank[p] / len(z) for p in folder.outliers)
  assert ranks[-1] < 0.2 and np.median(ranks) < 0.1, ranks


def test_clean_folder_has_no_finding_but_its_real_pair(planted, shared,
                                                       tmp_path):
  folder, model, config = planted
  clean = planting.copy_clean(
      os.path.join(shared, "datasets", "flower_photos_dev"),
      str(tmp_path / "clean"))
  audit = pipeline.audit_cache(config._replace(image_dir=clean),
                               model_options=model,
                               output_dir=str(tmp_path / "out"))
  assert [sorted(os.path.basename(m["path"]) for m in g["images"])
          for g in audit.groups] in ([], [list(REAL_PAIR)])
  assert not audit.leaked_test_images
  # The label-error list of a clean folder is not empty with a small model
  # (its hard photos: 38 of 475 measured), but most of what it lists on the
  # planted folder are the planted errors.
  planted_audit = pipeline.audit_cache(config, model_options=model,
                                       output_dir=str(tmp_path / "p"))
  planted_errors = len(folder.mislabeled) + len(folder.cross_class)
  assert len(audit.label_errors) < (len(planted_audit.label_errors) -
                                    0.5 * planted_errors)
  assert len(audit.outliers) <= 0.01 * audit.images + 1


def test_run_reports_leak_free_accuracy_and_html_section(planted, tmp_path):
  _, model, config = planted
  out = tmp_path / "run"
  proc = helpers.run_cli([
      f"--image_dir={config.image_dir}", f"--graph={model.graph}",
      f"--bottleneck_dir={config.bottleneck_dir}",
      f"--output_graph={out}/g.pb", f"--output_labels={out}/l.txt",
      "--summaries_dir=", "--how_many_training_steps=300"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  audit = json.loads((out / "audit.json").read_text())
  assert "test accuracy may be inflated by" in proc.stderr
  leaked = set(audit["leaked_test_images"])
  assert leaked
  # The whole test set was predicted (--test_batch_size=-1): without the
  # leaked images, the accuracy is that of the rest.
  kept = report["count"] - len(leaked)
  wrong = [r for r in report["misclassified"] if r["image"] not in leaked]
  assert report["test_images_leak_free"] == audit[
      "test_images_leak_free"] == kept
  assert report["test_accuracy_leak_free"] == pytest.approx(
      1 - len(wrong) / kept)
  assert audit["test_accuracy_leak_free"] == report["test_accuracy_leak_free"]
  dom = helpers.chromium_dom(out / "report.html", tmp_path)
  if dom is None:
    assert os.environ.get("CI") != "true", "chromium missing under CI"
    pytest.skip("chromium is not installed")
  section = dom.split("<section id=\"audit\">", 1)[1].split("</section>")[0]
  from retrain.reports import audit_html  # pylint: disable=g-import-not-at-top
  shown = len(audit_html.shown_paths(audit))
  assert section.count("<img") == shown > 0
  assert int(dom.split('data-loaded-images="', 1)[1].split('"')[0]) >= shown


def test_dedupe_keeps_each_group_in_one_set(planted, tmp_path):
  _, model, config = planted
  result = pipeline.run(config._replace(
      output_graph=str(tmp_path / "g.pb"),
      output_labels=str(tmp_path / "l.txt"), dedupe="group"),
      hparams=pipeline.HParams(how_many_training_steps=200),
      model_options=model)
  audit = json.loads((tmp_path / "audit.json").read_text())
  assert audit["leaked_test_images"] == []
  assert result.report["test_images_leak_free"] == len(result.test_paths)
  test = set(result.test_paths)
  for group in audit["duplicate_groups"]:
    inside = {m["path"] in test for m in group["images"]}
    assert len(inside) == 1, group  # All in the test set or none.


def test_exclude_from_training_leaves_the_findings_out(planted, audited,
                                                       tmp_path):
  _, model, config = planted
  _, report = audited
  path = tmp_path / "audit.json"
  # Written by a run that spelled --image_dir another way (relative).
  relative = json.loads(json.dumps(report))
  for key in ("label_errors", "outliers", "quality"):
    for row in relative[key]:
      row["path"] = os.path.relpath(row["path"])
  for group in relative["duplicate_groups"]:
    for member in group["images"]:
      member["path"] = os.path.relpath(member["path"])
  path.write_text(json.dumps(relative))
  hparams = pipeline.HParams(how_many_training_steps=200)
  base = dict(output_graph=str(tmp_path / "g.pb"),
              output_labels=str(tmp_path / "l.txt"), audit=False)
  plain = pipeline.run(config._replace(**base), hparams, model)
  excluded = pipeline.run(config._replace(
      exclude_from_training=str(path), **base), hparams, model)
  listed = {r["path"] for key in ("label_errors", "outliers", "quality")
            for r in report[key]}
  listed |= {m["path"] for g in report["duplicate_groups"]
             if not g["same_class"] for m in g["images"]}
  in_training = {m["path"] for key in ("label_errors", "outliers", "quality")
                 for m in report[key] if m["set"] == "training"}
  in_training |= {m["path"] for g in report["duplicate_groups"]
                  if not g["same_class"] for m in g["images"]
                  if m["set"] == "training"}
  assert in_training and listed >= in_training
  assert excluded.set_sizes["training"] == (plain.set_sizes["training"] -
                                            len(in_training))
  assert excluded.set_sizes["testing"] == plain.set_sizes["testing"]


@pytest.mark.parametrize("value,needle", [
    ("missing.json", "no such file"),
    ("bad.json", "not an audit.json"),
])
def test_exclude_from_training_bad_file_is_one_line(planted, tmp_path, value,
                                                    needle):
  _, model, config = planted
  (tmp_path / "bad.json").write_text("{\"label_errors\": 3}")
  with pytest.raises(UserError, match=needle):
    pipeline.run(config._replace(
        exclude_from_training=str(tmp_path / value),
        output_graph=str(tmp_path / "g.pb")), model_options=model)
  assert not (tmp_path / "g.pb").exists()


def test_standalone_audit_writes_only_its_reports(planted, tmp_path):
  _, model, config = planted
  before = {p: os.stat(os.path.join(config.bottleneck_dir, p)).st_mtime_ns
            for p in helpers.files_under(config.bottleneck_dir)}
  photos = helpers.files_under(config.image_dir)
  proc = helpers.run_cli([
      f"--image_dir={config.image_dir}", f"--graph={model.graph}",
      f"--bottleneck_dir={config.bottleneck_dir}",
      f"--audit_output_dir={tmp_path / 'out'}"], module="retrain.audit")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "out")) == ["audit.html", "audit.json"]
  after = {p: os.stat(os.path.join(config.bottleneck_dir, p)).st_mtime_ns
           for p in helpers.files_under(config.bottleneck_dir)}
  assert after == before and helpers.files_under(config.image_dir) == photos
  # Nothing cached for another model: one line, exit 2, nothing written.
  proc = helpers.run_cli([
      f"--image_dir={config.image_dir}", f"--graph={model.graph}",
      f"--bottleneck_dir={tmp_path / 'empty'}", "--input_size=160",
      f"--audit_output_dir={tmp_path / 'none'}"], module="retrain.audit")
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == 2 and "no cached bottleneck" in last, last
  assert last.startswith("retrain.audit: error: --bottleneck_dir=")
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "none").exists()


def test_noaudit_writes_no_audit(planted, tmp_path):
  _, model, config = planted
  result = pipeline.run(config._replace(
      output_graph=str(tmp_path / "g.pb"),
      output_labels=str(tmp_path / "l.txt"), audit=False),
      pipeline.HParams(how_many_training_steps=100), model)
  assert not (tmp_path / "audit.json").exists()
  assert "test_accuracy_leak_free" not in result.report


def test_neighbours_blocked_and_projected_match_brute_force(monkeypatch):
  rng = np.random.default_rng(0)
  x = np.abs(rng.normal(size=(3000, 200))).astype(np.float32)
  x[1500:1520] = x[:20] * 1.01 + 0.01  # Near copies.
  z = x / np.linalg.norm(x, axis=1, keepdims=True)
  s = z @ z.T
  np.fill_diagonal(s, -np.inf)
  truth = np.argsort(-s, axis=1)[:, :neighbours.K]
  monkeypatch.setattr(neighbours, "ROW_BLOCK", 256)
  monkeypatch.setattr(neighbours, "COLUMN_BLOCK", 700)
  monkeypatch.setattr(neighbours, "SAMPLE_COLUMNS", 300)
  exact = neighbours.nearest(x)
  # The k largest similarities of every row, and the neighbours themselves
  # (up to float ties: their similarities are those of the found ones).
  np.testing.assert_allclose(exact.similarity,
                             np.take_along_axis(s, truth, 1), atol=1e-5)
  np.testing.assert_allclose(np.take_along_axis(s, exact.index, 1),
                             exact.similarity, atol=1e-5)
  assert (exact.index == truth).mean() > 0.99
  monkeypatch.setattr(neighbours, "PROJECTED_DIMS", 64)
  projected = neighbours.nearest(x, project_above=0)
  # The near copies' nearest neighbour survives the projection, with its
  # similarity recomputed exactly.
  assert (projected.index[1500:1520, 0] == np.arange(20)).all()
  np.testing.assert_allclose(projected.similarity[1500:1520, 0],
                             s[np.arange(1500, 1520), np.arange(20)],
                             atol=1e-5)


def test_warm_rerun_reads_the_audit_from_the_cache(planted, tmp_path):
  _, model, config = planted
  from retrain.audit import memo  # pylint: disable=g-import-not-at-top
  inputs = pipeline.load_inputs(config, model)
  sets, _ = pipeline.bottlenecks.cached_bottlenecks(
      inputs.image_lists, inputs.fx, config.bottleneck_dir)
  data, names = findings.originals(sets, "#augmented")
  folder = str(tmp_path / "cache")
  first = memo.audited(data, names, inputs.labels, pipeline.HParams(),
                       folder)
  again = memo.audited(data, names, inputs.labels, pipeline.HParams(),
                       folder)
  assert not first.reused and again.reused
  assert "from the cache" in again.summary()
  assert json.dumps(again.to_json()) == json.dumps(first.to_json())
  # Other settings, or one vector changed: made again.
  other = memo.audited(data, names, inputs.labels,
                       pipeline.HParams(random_seed=1), folder)
  assert not other.reused
  changed = findings.LabeledBottlenecks(
      data.take(np.arange(len(data))) * np.float32(1.001), data.y,
      data.paths)
  assert not memo.audited(changed, names, inputs.labels, pipeline.HParams(),
                          folder).reused
  assert len(os.listdir(os.path.join(folder, memo.FOLDER))) == 3


def test_a_cache_folder_that_cannot_be_written_only_loses_the_shortcut(
    monkeypatch, tmp_path):
  """A read-only (or full) shared cache: the audit is made and returned,
  nothing kept, no error."""
  import errno  # pylint: disable=g-import-not-at-top
  from cache import memo as cache_memo  # pylint: disable=g-import-not-at-top
  from retrain.audit import memo  # pylint: disable=g-import-not-at-top

  def refuse(path, text, fsync=False):
    raise OSError(errno.EROFS, "Read-only file system", path)
  monkeypatch.setattr(cache_memo.fs, "write_text", refuse)
  rng = np.random.default_rng(0)
  data = findings.LabeledBottlenecks(
      np.abs(rng.normal(size=(60, 16))).astype(np.float32),
      np.repeat(np.arange(3), 20), [f"/x/{i}.jpg" for i in range(60)])
  audit = memo.audited(data, ["training"] * 60, ["a", "b", "c"],
                       pipeline.HParams(how_many_training_steps=50),
                       str(tmp_path))
  assert audit.images == 60 and not audit.reused
  assert not cache_memo.store(str(tmp_path), "audit", "k", {})
  assert not (tmp_path / memo.FOLDER / "k.json").exists()
