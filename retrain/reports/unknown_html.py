"""The Unknown section of report.html (--unknown_label): the threshold, how
many test photos (and --unknown_dir photos) the classifier answers with the
unknown class, the accuracy both ways, the score's distribution as an
inline SVG histogram, and the unknown photos it missed as thumbnails.

Renders report.json's "unknown" dict (training/unknown.evaluate); plain
Python.
"""

import html
import os
from typing import List, Mapping, Optional

# --unknown_dir photos answered with a known class, shown as thumbnails.
MAX_MISSED = 24

_WIDTH, _HEIGHT, _PAD = 640, 180, 28
_COLOURS = {"test": "#1f77b4", "others": "#d62728"}


def _e(value) -> str:
  return html.escape(str(value), quote=True)


def _pct(value: Optional[float]) -> str:
  return "n/a" if value is None else f"{value * 100:.1f}%"


def shown_paths(unknown: Mapping) -> List[str]:
  """The photos the section shows, for thumbnails."""
  return list(unknown.get("others_missed", []))[:MAX_MISSED]


def histogram_svg(unknown: Mapping) -> str:
  """Bars of the score's distribution: test photos (known classes) and
  --unknown_dir photos, each as a share of its own count, and the
  threshold as a vertical line."""
  hist = unknown["histogram"]
  edges = hist["edges"]
  series = [(name, hist[name]) for name in ("test", "others") if name in hist]
  shares = [(name, [c / max(sum(counts), 1) for c in counts])
            for name, counts in series]
  top = max([max(s) for _, s in shares if s] + [1e-9])
  span = (edges[-1] - edges[0]) or 1.0
  inner = _WIDTH - 2 * _PAD

  def x(value: float) -> float:
    return _PAD + inner * (value - edges[0]) / span
  bars = []
  width = inner / (len(edges) - 1) / max(len(shares), 1)
  for j, (name, values) in enumerate(shares):
    for i, share in enumerate(values):
      if not share:
        continue
      height = (_HEIGHT - 2 * _PAD) * share / top
      bars.append(
          f"<rect x='{x(edges[i]) + j * width:.1f}' "
          f"y='{_HEIGHT - _PAD - height:.1f}' width='{width:.1f}' "
          f"height='{height:.1f}' fill='{_COLOURS[name]}'><title>{name}: "
          f"{share * 100:.1f}% at {edges[i]:.3f}-{edges[i + 1]:.3f}"
          "</title></rect>")
  t = x(unknown["threshold"])
  labels = (f"<text x='{_PAD}' y='{_HEIGHT - 8}' font-size='11'>"
            f"{edges[0]:.2f}</text><text x='{_WIDTH - _PAD}' "
            f"y='{_HEIGHT - 8}' font-size='11' text-anchor='end'>"
            f"{edges[-1]:.2f}</text><text x='{t + 4:.1f}' y='{_PAD - 10}' "
            f"font-size='11'>threshold {unknown['threshold']:.3f}</text>")
  legend = "".join(
      f"<text x='{_WIDTH - _PAD}' y='{14 + 14 * j}' font-size='11' "
      f"text-anchor='end' fill='{_COLOURS[name]}'>"
      f"{'test photos' if name == 'test' else '--unknown_dir photos'}"
      "</text>" for j, (name, _) in enumerate(shares))
  return (f"<svg id=unknown-histogram width={_WIDTH} height={_HEIGHT} "
          f"viewBox='0 0 {_WIDTH} {_HEIGHT}' role=img "
          "aria-label='distance to the training photos'>"
          f"<line x1='{_PAD}' y1='{_HEIGHT - _PAD}' x2='{_WIDTH - _PAD}' "
          f"y2='{_HEIGHT - _PAD}' stroke='#999'/>{''.join(bars)}"
          f"<line x1='{t:.1f}' y1='{_PAD - 6}' x2='{t:.1f}' "
          f"y2='{_HEIGHT - _PAD}' stroke='#000' stroke-dasharray='4 3'/>"
          f"{labels}{legend}</svg>")


def section(unknown: Mapping, thumbs: Mapping[str, str]) -> str:
  """The HTML of the section, id=unknown."""
  rows = [
      ("answer", f"{unknown['label']} (the last label)"),
      ("score", unknown["score"]),
      ("threshold", f"{unknown['threshold']:.4f}, set " + (
          f"by {unknown['threshold_from']}" if unknown.get("threshold_from")
          else f"so that {_pct(unknown['accept'])} of the validation photos "
          "keep a known class") + "; validation photos that keep one: "
       f"{_pct(unknown['validation_accepted'])}"),
      ("size in each export", f"{unknown['megabytes']:.2f} MB"),
      ("test photos answered unknown",
       f"{_pct(unknown['test_rejected'])} of {unknown['test_photos']}"),
      ("test accuracy, an unknown answer counted as an error",
       _pct(unknown["test_accuracy"])),
      ("test accuracy among the accepted photos",
       f"{_pct(unknown['test_accuracy_accepted'])} of "
       f"{unknown['test_accepted']}"),
  ]
  if "others_photos" in unknown:
    rows += [("--unknown_dir photos answered unknown",
              f"{_pct(unknown['others_rejected'])} of "
              f"{unknown['others_photos']}"),
             ("AUROC (test vs --unknown_dir photos)",
              "n/a" if unknown["auroc"] is None
              else f"{unknown['auroc']:.3f}")]
  table = "".join(f"<tr><th class=l>{_e(k)}</th><td class=l>{_e(v)}</td>"
                  "</tr>" for k, v in rows)
  missed = shown_paths(unknown)
  figures = "".join(
      f"<figure>{_img(p, thumbs)}<figcaption>{_e(os.path.basename(p))}"
      "</figcaption></figure>" for p in missed)
  gallery = (f"<h3>--unknown_dir photos answered with a known class "
             f"({round((1 - unknown['others_rejected']) * unknown['others_photos'])})"
             f"</h3><div class=gallery id=unknown-missed>{figures}</div>"
             if missed else "")
  return ("<section id=unknown><h2>Unknown answers</h2>"
          "<p class=meta>the cosine distance of each photo's bottleneck to "
          "its nearest kept training photos; above the threshold, the "
          "classifier answers the unknown class, in every export.</p>"
          f"<table class=facts>{table}</table>{histogram_svg(unknown)}"
          f"{gallery}</section>")


def _img(path: str, thumbs: Mapping[str, str]) -> str:
  uri = thumbs.get(path)
  return (f"<img src='{uri}' alt='{_e(path)}'>" if uri
          else "<div class=missing>(image unreadable)</div>")
