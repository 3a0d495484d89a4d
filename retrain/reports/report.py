"""What a run achieved: accuracy, per-class metrics, confusion matrix.

Pure numpy (matplotlib optional, for a PNG): testable without a session.
"""

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from cache import fs


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray,
                     class_count: int) -> np.ndarray:
  """int [classes, classes]: row = true class, column = predicted class."""
  m = np.zeros((class_count, class_count), np.int64)
  np.add.at(m, (np.asarray(truth, np.int64), np.asarray(predicted, np.int64)),
            1)
  return m


def _ratio(a: float, b: float) -> float:
  return float(a) / b if b else 0.0


def classification_report(truth: np.ndarray, predicted: np.ndarray,
                          labels: Sequence[str],
                          paths: Sequence[str] = (),
                          probabilities: Optional[np.ndarray] = None,
                          answer_only: int = 0) -> Dict[str, object]:
  """Accuracy, per-class precision/recall/F1/support, confusion, mistakes.

  A class never predicted has precision 0; one without test images has
  recall 0 (and support 0); F1 is 0 where precision + recall is 0. The
  last `answer_only` labels (an unknown class) are answers, never truths:
  in the matrix and the mistakes, not in the averages.
  """
  truth = np.asarray(truth, np.int64)
  predicted = np.asarray(predicted, np.int64)
  m = confusion_matrix(truth, predicted, len(labels))
  per_class = []
  for i, label in enumerate(labels):
    tp = m[i, i]
    precision = _ratio(tp, m[:, i].sum())
    recall = _ratio(tp, m[i, :].sum())
    f1 = _ratio(2 * precision * recall, precision + recall)
    per_class.append(dict(label=label, precision=precision, recall=recall,
                          f1=f1, support=int(m[i, :].sum())))
  averaged = per_class[:len(per_class) - answer_only]
  support = np.array([c["support"] for c in averaged], float)
  def average(key, weights=None):
    values = np.array([c[key] for c in averaged])
    if weights is None:
      return float(values.mean()) if len(values) else 0.0
    return float((values * weights).sum() / weights.sum()) if weights.sum(
    ) else 0.0
  predictions = []  # Every test image, in order: the matrix's cells.
  for k in range(len(truth)):
    row = dict(image=paths[k] if len(paths) else None,
               true=labels[truth[k]], predicted=labels[predicted[k]])
    if probabilities is not None:
      row["probability"] = float(probabilities[k, predicted[k]])
    predictions.append(row)
  misclassified = []
  for k in np.flatnonzero(truth != predicted):
    row = dict(image=paths[k] if len(paths) else None,
               true=labels[truth[k]], predicted=labels[predicted[k]])
    if probabilities is not None:
      row["probability"] = float(probabilities[k, predicted[k]])
    misclassified.append(row)
  return dict(
      accuracy=_ratio((truth == predicted).sum(), len(truth)),
      count=int(len(truth)), labels=list(labels), per_class=per_class,
      macro_avg={k: average(k) for k in ("precision", "recall", "f1")},
      weighted_avg={k: average(k, support)
                    for k in ("precision", "recall", "f1")},
      confusion_matrix=m.tolist(), misclassified=misclassified,
      predictions=predictions)


def format_report(report: Dict[str, object]) -> str:
  """The report as a plain-text table a person can read."""
  labels = report["labels"]
  width = max([len(l) for l in labels] + [12])
  lines = [f"Test accuracy: {report['accuracy'] * 100:.1f}% "
           f"({report['count']} images)", "",
           f"{'class':<{width}}  precision  recall     f1  support"]
  for c in report["per_class"]:
    lines.append(f"{c['label']:<{width}}  {c['precision']:9.3f}  "
                 f"{c['recall']:6.3f}  {c['f1']:5.3f}  {c['support']:7d}")
  for name in ("macro_avg", "weighted_avg"):
    a = report[name]
    lines.append(f"{name.replace('_', ' '):<{width}}  {a['precision']:9.3f}"
                 f"  {a['recall']:6.3f}  {a['f1']:5.3f}  {report['count']:7d}")
  lines += ["", "Confusion matrix (rows: true class, columns: predicted):"]
  cell = max(5, max(len(str(v)) for row in report["confusion_matrix"]
                    for v in row) + 1)
  short = [l[:cell - 1] for l in labels]
  lines.append(" " * (width + 2) + "".join(f"{s:>{cell}}" for s in short))
  for label, row in zip(labels, report["confusion_matrix"]):
    lines.append(f"{label:<{width}}  " + "".join(f"{v:>{cell}}"
                                                 for v in row))
  for stage in report.get("stages", []):
    test = stage.get("test_accuracy")
    lines.append(
        f"{'Stage: ' + stage['stage']:<30} {stage['steps']:6d} steps "
        f"{stage['seconds']:7.1f} s  validation "
        f"{(stage.get('validation_accuracy') or 0) * 100:5.1f}%  test "
        + ("n/a" if test is None else f"{test * 100:5.1f}%") +
        ("" if stage.get("exported", True) else "  (not exported: stage 1 "
         "was better on validation)"))
  lines += ["", f"Misclassified test images: {len(report['misclassified'])}"]
  for row in report["misclassified"]:
    prob = (f" ({row['probability']:.3f})" if "probability" in row else "")
    lines.append(f"  {row['image']}: true {row['true']}, predicted "
                 f"{row['predicted']}{prob}")
  return "\n".join(lines) + "\n"


def confusion_image(matrix: np.ndarray, cell: int = 24) -> np.ndarray:
  """uint8 [h, w, 3] heat map of a confusion matrix (row-normalised), no text."""
  m = np.asarray(matrix, float)
  rows = m.sum(1, keepdims=True)
  share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
  shade = (255 - share * 200).astype(np.uint8)  # White to blue.
  image = np.stack([shade, shade, np.full_like(shade, 255)], -1)
  image = np.repeat(np.repeat(image, cell, 0), cell, 1)
  image[::cell, :, :] = 128  # Grid lines.
  image[:, ::cell, :] = 128
  return image


def write_reports(folder: str, report: Dict[str, object]) -> List[str]:
  """report.json, report.txt and (with matplotlib) confusion_matrix.png."""
  json_path = fs.join(folder, "report.json")
  text_path = fs.join(folder, "report.txt")
  fs.write_text(json_path, json.dumps(report, indent=2) + "\n")
  fs.write_text(text_path, format_report(report))
  written = [json_path, text_path]
  png = _confusion_png(report)
  if png is not None:
    path = fs.join(folder, "confusion_matrix.png")
    fs.write_atomic(path, png)
    written.append(path)
  return written


def _confusion_png(report: Dict[str, object]) -> Optional[bytes]:
  """A labelled confusion matrix plot, or None without matplotlib."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  import io  # pylint: disable=g-import-not-at-top
  labels = report["labels"]
  m = np.array(report["confusion_matrix"])
  size = 2 + 0.6 * len(labels)
  fig, ax = plt.subplots(figsize=(size, size))
  ax.imshow(m, cmap="Blues")
  ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
  ax.set_yticks(range(len(labels)), labels)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  for (i, j), v in np.ndenumerate(m):
    ax.text(j, i, str(v), ha="center", va="center",
            color="white" if v > m.max() / 2 else "black")
  ax.set_title(f"test accuracy {report['accuracy'] * 100:.1f}%")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  return buf.getvalue()
