"""report.html: one self-contained page to look at after a run.

Accuracy, the per-class table, the confusion matrix, training curves (inline
SVG) and a gallery of the misclassified test images (inline JPEG
thumbnails), worst first. No script, no external file: it opens from disk in
any browser and can be mailed as it is. Rendering is plain Python; only
`thumbnails` uses TensorFlow (to decode and shrink the images).
"""

import base64
import datetime
import html
import os
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from cache import fs
from retrain.reports import audit_html, unknown_html

REPORT_HTML = "report.html"

# Misclassified images shown as thumbnails; the rest are counted (all of
# them are listed in report.json).
MAX_GALLERY = 200
# Photos shown in a confusion-matrix cell (mistakes: most confident first;
# right answers: least confident first), and in all cells together; every
# test image is listed in report.json ("predictions").
MAX_CELL_PHOTOS = 24
MAX_MATRIX_PHOTOS = 600
THUMBNAIL_SIZE = 160  # Longest side, in pixels.

_TRAIN_COLOR = "#1f77b4"
_VALIDATION_COLOR = "#ff7f0e"


class Curve(NamedTuple):
  """One training stage's evaluations, for the charts.

  steps [n]; train_* are measured on the step's batch, validation_* on the
  validation sample (None where there was none).
  """
  stage: str
  steps: Sequence[int]
  train_accuracy: Sequence[float]
  train_cross_entropy: Sequence[float]
  validation_accuracy: Sequence[Optional[float]]
  validation_cross_entropy: Sequence[Optional[float]]


def thumbnails(paths: Sequence[str], size: int = THUMBNAIL_SIZE
               ) -> Dict[str, str]:
  """data: URIs of JPEG thumbnails (longest side `size`), by path.

  Images that cannot be read or decoded now are left out.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = {}
  for path in paths:
    try:
      data = fs.read_bytes(path)
      if data[:3] == b"\xff\xd8\xff":  # JPEG: decoded at 1/2..1/8 if big.
        h, w = tf.image.extract_jpeg_shape(data).numpy()[:2]
        ratio = next(r for r in (8, 4, 2, 1) if max(h, w) >= r * size or
                     r == 1)
        image = tf.io.decode_jpeg(data, channels=3, ratio=ratio)
      else:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
      h, w = int(image.shape[0]), int(image.shape[1])
      scale = min(1.0, size / max(h, w))
      small = tf.image.resize(image, [max(1, round(h * scale)),
                                      max(1, round(w * scale))],
                              antialias=True)
      jpeg = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(
          tf.round(small), 0, 255), tf.uint8), quality=85).numpy()
    except (OSError, tf.errors.OpError, ValueError):
      continue
    out[path] = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
  return out


def _e(value) -> str:
  return html.escape(str(value), quote=True)


def _pct(value: Optional[float]) -> str:
  return "n/a" if value is None else f"{value * 100:.1f}%"


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;
margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.2em;margin-top:32px;
border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:.9em}
.big{font-size:2.2em;font-weight:600;margin:8px 0}
table{border-collapse:collapse;font-size:.92em}
td,th{padding:4px 10px;border:1px solid #ddd;text-align:right}
th{background:#f5f5f5}td.l,th.l{text-align:left}
table.matrix td{min-width:44px;text-align:center}table.matrix a{color:inherit}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:176px;font-size:.8em;border:1px solid #ddd;
padding:6px;border-radius:4px}
figure img{display:block;max-width:160px;max-height:160px;margin:0 auto 4px}
figcaption{word-break:break-all}.wrong{color:#b00}.right{color:#070}
.cell{display:none;border:1px solid #ddd;padding:8px 12px;margin:12px 0}
.cell:target{display:block}.cell h3{font-size:1em;margin:4px 0 8px}
"""


def _summary_table(evaluation: Mapping, facts: Mapping[str, object]) -> str:
  rows = "".join(f"<tr><th class=l>{_e(k)}</th><td class=l>{_e(v)}</td></tr>"
                 for k, v in facts.items())
  return (f"<div class=big>{_pct(evaluation['accuracy'])}</div>"
          f"<p>test accuracy on {evaluation['count']} images</p>"
          f"<table class=facts>{rows}</table>")


def _per_class_table(evaluation: Mapping) -> str:
  head = ("<tr><th class=l>class</th><th>precision</th><th>recall</th>"
          "<th>F1</th><th>support</th></tr>")
  rows = [f"<tr><td class=l>{_e(c['label'])}</td><td>{c['precision']:.3f}"
          f"</td><td>{c['recall']:.3f}</td><td>{c['f1']:.3f}</td>"
          f"<td>{c['support']}</td></tr>" for c in evaluation["per_class"]]
  for name in ("macro_avg", "weighted_avg"):
    a = evaluation[name]
    rows.append(f"<tr><th class=l>{name.replace('_', ' ')}</th>"
                f"<td>{a['precision']:.3f}</td><td>{a['recall']:.3f}</td>"
                f"<td>{a['f1']:.3f}</td><td>{evaluation['count']}</td></tr>")
  return f"<table id=per-class>{head}{''.join(rows)}</table>"


def _matrix_table(evaluation: Mapping) -> str:
  labels = evaluation["labels"]
  matrix = evaluation["confusion_matrix"]
  head = "<tr><th class=l>true \\ predicted</th>" + "".join(
      f"<th>{_e(l)}</th>" for l in labels) + "</tr>"
  rows = []
  for label, row in zip(labels, matrix):
    total = sum(row)
    cells = []
    for j, value in enumerate(row):
      share = value / total if total else 0.0
      diagonal = labels[j] == label
      color = (f"rgba(31,119,180,{share:.3f})" if diagonal
               else f"rgba(214,39,40,{share:.3f})")
      ink = "#fff" if share > 0.5 else "#222"
      text = (f"<a href='#{_cell_id(labels.index(label), j)}'>{value}</a>"
              if value else "0")
      cells.append(f"<td style='background:{color};color:{ink}' "
                   f"title='{_e(label)} predicted as {_e(labels[j])}: "
                   f"{value}'>{text}</td>")
    rows.append(f"<tr><th class=l>{_e(label)}</th>{''.join(cells)}</tr>")
  return f"<table class=matrix id=confusion-matrix>{head}{''.join(rows)}</table>"


def _chart(title: str, curves: Sequence[Curve], train_key: str,
           validation_key: str, percent: bool) -> str:
  """An SVG line chart of train and validation values by step."""
  width, height, left, right, top, bottom = 480, 260, 56, 12, 28, 36
  series = []  # (color, dashed, [(step, value)]).
  offset = 0
  for k, curve in enumerate(curves):
    for key, color in ((train_key, _TRAIN_COLOR),
                       (validation_key, _VALIDATION_COLOR)):
      points = [(offset + s, v) for s, v in zip(curve.steps,
                                                getattr(curve, key))
                if v is not None]
      if points:
        series.append((color, k > 0, points))
    if curve.steps:
      offset += curve.steps[-1]
  values = [v for _, _, pts in series for _, v in pts]
  if not values:
    return ""
  x_max = max(1, offset)
  y_min = 0.0
  y_max = 1.0 if percent else max(max(values) * 1.05, 1e-6)

  def x(step):
    return left + (width - left - right) * step / x_max

  def y(value):
    return top + (height - top - bottom) * (1 - (value - y_min) /
                                            (y_max - y_min))
  parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' "
           f"height='{height}' role='img' aria-label='{_e(title)}'>",
           f"<text x='{left}' y='16' font-size='13' font-weight='600'>"
           f"{_e(title)}</text>"]
  for i in range(5):
    value = y_min + (y_max - y_min) * i / 4
    label = f"{value * 100:.0f}%" if percent else f"{value:.2f}"
    parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y(value):.1f}'"
                 f" y2='{y(value):.1f}' stroke='#eee'/><text x='{left - 6}' "
                 f"y='{y(value) + 4:.1f}' font-size='10' text-anchor='end'>"
                 f"{label}</text>")
  parts.append(f"<text x='{width - right}' y='{height - 6}' font-size='10' "
               f"text-anchor='end'>step {x_max}</text><text x='{left}' "
               f"y='{height - 6}' font-size='10'>0</text>")
  for color, dashed, points in series:
    path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
    dash = " stroke-dasharray='5,3'" if dashed else ""
    parts.append(f"<polyline fill='none' stroke='{color}' stroke-width='1.5'"
                 f"{dash} points='{path}'/>")
  legend_y = height - 20
  for k, (name, color) in enumerate((("train", _TRAIN_COLOR),
                                     ("validation", _VALIDATION_COLOR))):
    lx = left + 10 + k * 110
    parts.append(f"<line x1='{lx}' x2='{lx + 18}' y1='{legend_y}' "
                 f"y2='{legend_y}' stroke='{color}' stroke-width='2'/>"
                 f"<text x='{lx + 22}' y='{legend_y + 4}' font-size='11'>"
                 f"{name}</text>")
  parts.append("</svg>")
  return "".join(parts)


def _cell_id(true: int, predicted: int) -> str:
  return f"cell-{true}-{predicted}"


def _cells(evaluation: Mapping) -> Dict[Tuple[int, int], list]:
  """The test images of each confusion-matrix cell (true, predicted), in
  the order shown: mistakes most confident first, right answers least
  confident first."""
  index = {label: i for i, label in enumerate(evaluation["labels"])}
  cells: Dict[Tuple[int, int], list] = {}
  for row in evaluation.get("predictions", []):
    cells.setdefault((index[row["true"]], index[row["predicted"]]),
                     []).append(row)
  for (t, p), rows in cells.items():
    sign = -1.0 if t != p else 1.0
    rows.sort(key=lambda r: sign * r.get("probability", 0.0))
  return cells


def matrix_photos(evaluation: Mapping) -> List[str]:
  """The paths the confusion-matrix cells show (at most MAX_CELL_PHOTOS a
  cell, MAX_MATRIX_PHOTOS in all: mistakes first)."""
  cells = _cells(evaluation)
  order = sorted(cells, key=lambda c: (c[0] == c[1], c))
  shown: List[str] = []
  for cell in order:
    for row in cells[cell][:MAX_CELL_PHOTOS]:
      if len(shown) >= MAX_MATRIX_PHOTOS:
        return shown
      if row.get("image"):
        shown.append(row["image"])
  return shown


def _figure(row: Mapping, thumbs: Mapping[str, str], wrong: bool) -> str:
  uri = thumbs.get(row["image"])
  picture = (f"<img class=thumb src='{uri}' alt='{_e(row['image'])}'>"
             if uri else "<div class=missing>(not shown)</div>")
  probability = (f" ({row['probability']:.3f})" if "probability" in row
                 else "")
  ink = "wrong" if wrong else "right"
  return (f"<figure>{picture}<figcaption>"
          f"<b class={ink}>{_e(row['predicted'])}</b>{probability}<br>"
          f"true: {_e(row['true'])}<br>"
          f"<span class=meta>{_e(os.path.basename(str(row['image'])))}"
          f"</span></figcaption></figure>")


def _cell_sections(evaluation: Mapping, thumbs: Mapping[str, str]) -> str:
  """One section per non-empty cell, shown when its number is clicked
  (CSS :target; no script)."""
  labels = evaluation["labels"]
  out = []
  for (t, p), rows in sorted(_cells(evaluation).items()):
    figures = "".join(_figure(r, thumbs, t != p)
                      for r in rows[:MAX_CELL_PHOTOS])
    more = len(rows) - MAX_CELL_PHOTOS
    note = (f"<p class=meta>and {more} more, listed in report.json "
            "(predictions).</p>" if more > 0 else "")
    out.append(
        f"<section class=cell id={_cell_id(t, p)}><h3>true "
        f"{_e(labels[t])}, predicted {_e(labels[p])}: {len(rows)} test "
        f"image{'s' if len(rows) != 1 else ''}</h3><div class=gallery>"
        f"{figures}</div>{note}<p class=meta><a href='#confusion-matrix'>"
        "close</a></p></section>")
  return "".join(out)


def _worst_first(evaluation: Mapping) -> list:
  """The misclassified test images, most confident mistake first."""
  return sorted(evaluation["misclassified"],
                key=lambda r: -r.get("probability", 0.0))


def _gallery(evaluation: Mapping, thumbs: Mapping[str, str]) -> str:
  wrong = _worst_first(evaluation)
  if not wrong:
    return "<p>No test image was misclassified.</p>"
  figures = []
  for row in wrong[:MAX_GALLERY]:
    uri = thumbs.get(row["image"])
    picture = (f"<img class=thumb src='{uri}' alt='{_e(row['image'])}'>"
               if uri else "<div class=missing>(image unreadable)</div>")
    probability = (f" ({row['probability']:.3f})" if "probability" in row
                   else "")
    figures.append(
        f"<figure>{picture}<figcaption>"
        f"<b class=wrong>{_e(row['predicted'])}</b>{probability}<br>"
        f"true: {_e(row['true'])}<br>"
        f"<span class=meta>{_e(os.path.basename(str(row['image'])))}"
        f"</span></figcaption></figure>")
  more = len(wrong) - MAX_GALLERY
  note = (f"<p>and {more} more, listed in report.json.</p>" if more > 0
          else "")
  return f"<div class=gallery id=misclassified>{''.join(figures)}</div>{note}"


def render(evaluation: Mapping, curves: Sequence[Curve],
           thumbs: Mapping[str, str],
           facts: Optional[Mapping[str, object]] = None,
           audit: Optional[Mapping] = None) -> str:
  """The page as a string.

  Args:
    evaluation: report.classification_report of the test set.
    curves: the training stages' evaluations, in order.
    thumbs: data: URIs of misclassified images, by path (see thumbnails).
    facts: a few lines about the run (model, images, steps), shown on top.
    audit: audit.json's contents: an Audit section (thumbnails in thumbs).
  """
  facts = dict(facts or {})
  charts = "".join(
      _chart(title, curves, train_key, validation_key, percent)
      for title, train_key, validation_key, percent in (
          ("Accuracy", "train_accuracy", "validation_accuracy", True),
          ("Cross entropy", "train_cross_entropy",
           "validation_cross_entropy", False)))
  stages = ", ".join(c.stage for c in curves)
  generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  return (
      "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
      "<meta name=viewport content='width=device-width,initial-scale=1'>"
      f"<title>retrain report: {_pct(evaluation['accuracy'])}</title>"
      f"<style>{_STYLE}{audit_html.STYLE}</style></head><body>"
      f"<h1>retrain report</h1><p class=meta>written {generated}</p>"
      f"{_summary_table(evaluation, facts)}"
      "<h2>Per class</h2>" + _per_class_table(evaluation) +
      "<h2>Confusion matrix</h2><p class=meta>rows: true class; columns: "
      "predicted class; shade: share of the row; click a number for its "
      "test images.</p>" +
      _matrix_table(evaluation) + _cell_sections(evaluation, thumbs) +
      f"<h2>Training</h2><p class=meta>{_e(stages)}; train values are "
      "measured on each step's batch, validation values on the validation "
      "sample.</p>"
      f"<div class=charts>{charts}</div>"
      f"<h2>Misclassified test images ({len(evaluation['misclassified'])})"
      "</h2><p class=meta>most confident mistakes first: predicted label "
      "(its probability), true label, file.</p>" +
      _gallery(evaluation, thumbs) +
      (unknown_html.section(evaluation["unknown"], thumbs)
       if evaluation.get("unknown") else "") +
      (audit_html.section(audit, thumbs) if audit else "") +
      "</body></html>\n")


def write_html(folder: str, evaluation: Mapping, curves: Sequence[Curve],
               facts: Optional[Mapping[str, object]] = None,
               audit: Optional[Mapping] = None) -> str:
  """Writes report.html (atomically) into `folder`; returns its path."""
  shown = [r["image"] for r in _worst_first(evaluation)[:MAX_GALLERY]
           if r.get("image")] + matrix_photos(evaluation)
  if evaluation.get("unknown"):
    shown += unknown_html.shown_paths(evaluation["unknown"])
  if audit:
    shown += audit_html.shown_paths(audit)
  thumbs = thumbnails(list(dict.fromkeys(shown)))
  path = fs.join(folder, REPORT_HTML)
  fs.write_text(path, render(evaluation, curves, thumbs, facts, audit))
  return path


def curve_from_history(stage: str, history: Sequence) -> Curve:
  """A Curve from train.EvalPoint-like records."""
  return Curve(stage, [p.step for p in history],
               [p.train_accuracy for p in history],
               [p.cross_entropy for p in history],
               [p.validation_accuracy for p in history],
               [getattr(p, "validation_cross_entropy", None) for p in history])



AUDIT_HTML = "audit.html"


def write_audit_html(folder: str, audit: Mapping) -> str:
  """Writes audit.html (the Audit section as a page of its own, what
  `python -m retrain.audit` shows) into `folder`; returns its path."""
  thumbs = thumbnails(list(dict.fromkeys(audit_html.shown_paths(audit))))
  page = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
          "<meta name=viewport content='width=device-width,initial-scale=1'>"
          f"<title>retrain audit</title><style>{_STYLE}{audit_html.STYLE}"
          "</style></head><body><h1>retrain audit</h1><p class=meta>written "
          f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>"
          f"{audit_html.section(audit, thumbs)}</body></html>\n")
  path = fs.join(folder, AUDIT_HTML)
  fs.write_text(path, page)
  return path
