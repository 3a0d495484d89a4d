"""Reports checked against values computed by hand."""

import json

import numpy as np
import pytest

from retrain import report

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
  pytest.importorskip("matplotlib", reason="optional dependency")
  r = report.classification_report(TRUTH, PRED, LABELS)
  written = report.write_reports(str(tmp_path), r)
  png = tmp_path / "confusion_matrix.png"
  assert str(png) in written
  assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
