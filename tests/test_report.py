"""Reports checked against values computed by hand."""

import html
import json
import re

import numpy as np
import pytest

from retrain.reports import report
from tests import helpers

LABELS = ["cat", "dog", "owl"]
# 8 test images. By hand:
#            pred cat dog owl
# true cat        2   1   0     support 3
# true dog        1   2   0     support 3
# true owl        0   1   1     support 2
TRUTH = [0, 0, 0, 1, 1, 1, 2, 2]
PRED = [0, 0, 1, 0, 1, 1, 1, 2]


def test_confusion_matrix_by_hand():
  m = report.confusion_matrix(TRUTH, PRED, 3)
  assert m.tolist() == [[2, 1, 0], [1, 2, 0], [0, 1, 1]]


def test_per_class_metrics_by_hand():
  r = report.classification_report(TRUTH, PRED, LABELS,
                                   paths=[f"{i}.jpg" for i in range(8)])
  assert r["accuracy"] == pytest.approx(5 / 8)
  cat, dog, owl = r["per_class"]
  # cat: precision 2/3 (predicted cat: 0,1,3), recall 2/3.
  assert cat["precision"] == pytest.approx(2 / 3)
  assert cat["recall"] == pytest.approx(2 / 3)
  assert cat["f1"] == pytest.approx(2 / 3)
  # dog: precision 2/4, recall 2/3, F1 = 2*.5*.667/(1.167) = 4/7.
  assert dog["precision"] == pytest.approx(0.5)
  assert dog["recall"] == pytest.approx(2 / 3)
  assert dog["f1"] == pytest.approx(4 / 7)
  # owl: precision 1/1, recall 1/2, F1 2/3.
  assert owl["precision"] == pytest.approx(1.0)
  assert owl["recall"] == pytest.approx(0.5)
  assert owl["f1"] == pytest.approx(2 / 3)
  assert [c["support"] for c in r["per_class"]] == [3, 3, 2]
  assert r["macro_avg"]["f1"] == pytest.approx((2 / 3 + 4 / 7 + 2 / 3) / 3)
  assert r["weighted_avg"]["recall"] == pytest.approx(
      (3 * 2 / 3 + 3 * 2 / 3 + 2 * 0.5) / 8)
  assert [(m["image"], m["true"], m["predicted"])
          for m in r["misclassified"]] == [
              ("2.jpg", "cat", "dog"), ("3.jpg", "dog", "cat"),
              ("6.jpg", "owl", "dog")]


def test_never_predicted_and_empty_classes_give_zero_not_nan():
  r = report.classification_report([0, 0, 1], [0, 0, 0], ["a", "b", "c"])
  b, c = r["per_class"][1:]
  assert (b["precision"], b["recall"], b["f1"]) == (0.0, 0.0, 0.0)
  assert (c["precision"], c["recall"], c["support"]) == (0.0, 0.0, 0)
  json.dumps(r)  # Serializable: no numpy types, no NaN.


def test_text_report_and_files(tmp_path):
  r = report.classification_report(
      TRUTH, PRED, LABELS, paths=[f"{i}.jpg" for i in range(8)],
      probabilities=np.eye(3)[PRED] * 0.9)
  text = report.format_report(r)
  assert "Test accuracy: 62.5% (8 images)" in text
  assert "dog               0.500   0.667  0.571        3" in text
  assert "2.jpg: true cat, predicted dog (0.900)" in text
  written = report.write_reports(str(tmp_path), r)
  assert json.loads((tmp_path / "report.json").read_text()) == r
  assert (tmp_path / "report.txt").read_text() == text
  assert str(tmp_path / "report.txt") in written


def test_confusion_image():
  image = report.confusion_image(np.array([[3, 1], [0, 2]]), cell=10)
  assert image.shape == (20, 20, 3) and image.dtype == np.uint8
  # Darker where the share is larger: (0,0) 75%, (0,1) 25%.
  assert image[5, 5, 0] < image[5, 15, 0]


def test_confusion_png_with_matplotlib(tmp_path):
  helpers.require("matplotlib")
  r = report.classification_report(TRUTH, PRED, LABELS)
  written = report.write_reports(str(tmp_path), r)
  png = tmp_path / "confusion_matrix.png"
  assert str(png) in written
  assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def _evaluation(tmp_path, wrong=3):
  import numpy as np
  from retrain.reports import report
  from PIL import Image
  paths = []
  for i in range(6):
    path = tmp_path / f"img{i}.png"
    Image.fromarray(np.full((40 + i, 30, 3), 40 * i, np.uint8)).save(path)
    paths.append(str(path))
  truth = np.array([0, 0, 1, 1, 2, 2])
  predicted = truth.copy()
  predicted[:wrong] = (truth[:wrong] + 1) % 3
  probabilities = np.full((6, 3), 0.1, np.float32)
  probabilities[np.arange(6), predicted] = [0.5, 0.9, 0.7, 0.8, 0.8, 0.8]
  return report.classification_report(
      truth, predicted, ["a<b", "c & d", "e"], paths, probabilities)


def _curve():
  from retrain.reports import report_html
  return report_html.Curve("head", [10, 20, 30], [0.5, 0.7, 0.9],
                           [1.0, 0.6, 0.3], [0.4, 0.6, None],
                           [1.1, 0.7, None])


def _gallery_part(page):
  """The misclassified gallery of a report page."""
  return page.split("id=misclassified>")[1].split("<h2")[0]


def test_html_report_has_tables_curves_and_worst_mistakes_first(tmp_path):
  from retrain.reports import report_html
  evaluation = _evaluation(tmp_path)
  path = report_html.write_html(str(tmp_path), evaluation, [_curve()],
                                {"model": "m.pb"})
  page = open(path, encoding="utf-8").read()
  assert "<script" not in page
  assert "a&lt;b" in page and "c &amp; d" in page and "a<b" not in page
  gallery = _gallery_part(page)
  assert gallery.count("class=thumb") == 3
  assert gallery.count("src='data:image/jpeg;base64,") == 3
  # Most confident mistake first: img1 (0.9), img2 (0.7), img0 (0.5).
  order = [gallery.index(f"img{i}.png</span>") for i in (1, 2, 0)]
  assert order == sorted(order)
  assert page.count("<polyline") == 4  # Train and validation, 2 charts.
  assert "50.0%" in page  # The accuracy.
  matrix = page.split("id=confusion-matrix>")[1].split("</table>")[0]
  assert matrix.count("<tr>") == 4 and ">1</a></td>" in matrix


def test_html_report_gallery_is_capped_and_unreadable_images_named(
    tmp_path, monkeypatch):
  from retrain.reports import report_html
  evaluation = _evaluation(tmp_path, wrong=3)
  monkeypatch.setattr(report_html, "MAX_GALLERY", 2)
  import os
  os.remove(evaluation["misclassified"][1]["image"])  # img1, the worst.
  path = report_html.write_html(str(tmp_path), evaluation, [_curve()])
  page = open(path, encoding="utf-8").read()
  assert _gallery_part(page).count("class=thumb") == 1
  assert "(image unreadable)" in page
  assert "and 1 more, listed in report.json" in page


def test_html_report_without_mistakes_or_validation(tmp_path):
  from retrain.reports import report_html
  evaluation = _evaluation(tmp_path, wrong=0)
  curve = _curve()._replace(validation_accuracy=[None] * 3,
                            validation_cross_entropy=[None] * 3)
  page = report_html.render(evaluation, [curve], {})
  assert "No test image was misclassified" in page
  assert page.count("<polyline") == 2


def test_confusion_matrix_cells_open_their_test_images(tmp_path,
                                                       monkeypatch):
  """Each non-zero cell links to a section (shown by CSS :target, no
  script) with that cell's images: thumbnail, predicted and true label,
  probability; mistakes most confident first, right answers least
  confident first; capped per cell, the rest counted."""
  from retrain.reports import report_html
  evaluation = _evaluation(tmp_path, wrong=3)
  assert len(evaluation["predictions"]) == 6
  path = report_html.write_html(str(tmp_path), evaluation, [_curve()])
  page = open(path, encoding="utf-8").read()
  assert "<script" not in page and ".cell:target{display:block}" in page
  matrix = page.split("id=confusion-matrix>")[1].split("</table>")[0]
  links = re.findall(r"href='#(cell-\d-\d)'>(\d+)</a>", matrix)
  m = evaluation["confusion_matrix"]
  assert sorted(links) == sorted(
      (f"cell-{t}-{p}", str(m[t][p])) for t in range(3) for p in range(3)
      if m[t][p])
  for cell, count in links:
    section = page.split(f"<section class=cell id={cell}>")[1].split(
        "</section>")[0]
    assert section.count("class=thumb") == int(count)
    t, p = int(cell[5]), int(cell[7])
    assert f"predicted {html.escape(evaluation['labels'][p])}" in section
    assert section.count(
        f"true: {html.escape(evaluation['labels'][t])}") == int(count)
  # Class e (index 2): both right, at 0.8 each; class a<b: img0 wrongly as
  # c & d (0.5), img1 too (0.9): the more confident mistake first.
  cell = page.split("<section class=cell id=cell-0-1>")[1]
  assert cell.index("img1.png") < cell.index("img0.png")
  assert "(0.900)" in cell
  monkeypatch.setattr(report_html, "MAX_CELL_PHOTOS", 1)
  page = open(report_html.write_html(str(tmp_path), evaluation, [_curve()]),
              encoding="utf-8").read()
  cell = page.split("<section class=cell id=cell-0-1>")[1].split(
      "</section>")[0]
  assert cell.count("<figure>") == 1 and "and 1 more" in cell
