"""The Audit section of report.html (and the page of `python -m
retrain.audit`): duplicate groups side by side with their classes and sets,
likely label errors (folder class vs suggested class, confidence) and
outliers, worst first, each image as an inline thumbnail.

Renders audit.json's dict (audit/findings.py); plain Python.
"""

import html
import os
from typing import Dict, Iterable, List, Mapping

# Findings shown with thumbnails; the rest are counted (audit.json has all).
MAX_GROUPS = 40
MAX_LABEL_ERRORS = 60
MAX_OUTLIERS = 20
MAX_QUALITY_PER_KIND = 12

STYLE = """
.group{display:flex;flex-wrap:wrap;gap:8px;border:1px solid #ddd;
padding:8px;margin:8px 0;border-radius:4px}.group.leak{border-color:#b00}
.tag{display:inline-block;padding:0 6px;border-radius:3px;background:#eee;
margin-right:4px}.tag.bad{background:#fdd;color:#900}
"""


def _e(value) -> str:
  return html.escape(str(value), quote=True)


def shown_paths(audit: Mapping) -> List[str]:
  """The images the section shows, for thumbnails."""
  paths = [m["path"] for g in audit["duplicate_groups"][:MAX_GROUPS]
           for m in g["images"]]
  paths += [r["path"] for r in audit["label_errors"][:MAX_LABEL_ERRORS]]
  paths += [r["path"] for r in audit["outliers"][:MAX_OUTLIERS]]
  paths += [r["path"] for rows in _quality_by_kind(audit).values()
            for r in rows[:MAX_QUALITY_PER_KIND]]
  return paths


def _quality_by_kind(audit: Mapping) -> Dict[str, List[Mapping]]:
  out: Dict[str, List[Mapping]] = {}
  for row in audit.get("quality", []):  # Worst first within each kind.
    out.setdefault(row["issue"], []).append(row)
  return out


def _quality(audit: Mapping, thumbs: Mapping[str, str]) -> str:
  """The photo-quality part: each kind's photos, worst first."""
  if "quality_counts" not in audit:
    return ""
  groups = _quality_by_kind(audit)
  total = sum(len(v) for v in groups.values())
  thresholds = audit.get("quality_thresholds", {})
  parts = [f"<h3>Photo quality ({total})</h3><p class=meta>from statistics "
           "of each photo kept with its bottleneck; worst first. "
           "--exclude_from_training=audit.json leaves them out of "
           "training.</p><div id=quality>"]
  if not total:
    parts.append("<p>None found.</p>")
  for kind, rows in groups.items():
    rule = thresholds.get(kind, {})
    parts.append(f"<h4>{_e(kind.replace('_', ' '))} ({len(rows)})</h4>"
                 f"<p class=meta>score: {_e(rule.get('score', ''))}</p>"
                 f"<div class=gallery id=quality-{_e(kind)}>")
    parts += [_figure(r["path"], thumbs,
                      f"{_e(r['label'])} ({_e(r['set'])}), "
                      f"{float(r['score']):.3g}")
              for r in rows[:MAX_QUALITY_PER_KIND]]
    parts.append("</div>" + _more(rows, MAX_QUALITY_PER_KIND))
  parts.append("</div>")
  return "".join(parts)


def _figure(path: str, thumbs: Mapping[str, str], caption: str) -> str:
  uri = thumbs.get(path)
  picture = (f"<img class='thumb audit' src='{uri}' alt='{_e(path)}'>" if uri
             else "<div class=missing>(image unreadable)</div>")
  return (f"<figure>{picture}<figcaption>{caption}<br><span class=meta>"
          f"{_e(os.path.basename(path))}</span></figcaption></figure>")


def _more(items: list, shown: int) -> str:
  rest = len(items) - shown
  return f"<p>and {rest} more, listed in audit.json.</p>" if rest > 0 else ""


def _groups(groups: List[Mapping], thumbs: Mapping[str, str]) -> Iterable[str]:
  for g in groups[:MAX_GROUPS]:
    tags = [f"<span class=tag>{_e(g['kind'])}</span>",
            f"<span class='tag{'' if g['same_class'] else ' bad'}'>"
            f"{'same class' if g['same_class'] else 'different classes'}"
            "</span>",
            f"<span class='tag{' bad' if g['leak'] else ''}'>"
            f"{_e(' + '.join(g['sets']))}{' (leak)' if g['leak'] else ''}"
            "</span>",
            f"<span class=meta>similarity {g['similarity']:.3f}</span>"]
    figures = "".join(_figure(m["path"], thumbs,
                              f"<b>{_e(m['label'])}</b> ({_e(m['set'])})")
                      for m in g["images"])
    yield (f"<div class='group{' leak' if g['leak'] else ''}'>"
           f"<div style='width:100%'>{''.join(tags)}</div>{figures}</div>")


def section(audit: Mapping, thumbs: Mapping[str, str]) -> str:
  """The HTML of the section, id=audit."""
  c: Dict[str, int] = audit["counts"]
  groups = audit["duplicate_groups"]
  errors = audit["label_errors"]
  far = audit["outliers"]
  leak_line = ""
  if c["leaked_test_images"]:
    accuracy = audit.get("test_accuracy_leak_free")
    leak_line = (f"<p class=wrong>{c['leaked_test_images']} test images "
                 "have a duplicate in training: the test accuracy may be "
                 "inflated" + (f"; without them it is {accuracy * 100:.1f}% "
                               f"on {audit['test_images_leak_free']} images"
                               if accuracy is not None else "") + ".</p>")
  parts = [
      "<section id=audit><h2>Audit</h2>",
      f"<p>{audit['images']} images: {c['exact_groups']} exact and "
      f"{c['near_groups']} near duplicate groups "
      f"({c['groups_across_classes']} across classes), "
      f"{c['label_errors']} likely label errors, {c['outliers']} outliers"
      + (f", {c.get('quality', 0)} photo-quality findings"
         if "quality_counts" in audit else "") + " "
      f"<span class=meta>({audit['seconds']:.1f} s, from the cached "
      "bottlenecks; nothing was changed)</span></p>", leak_line,
      f"<h3>Duplicate groups ({len(groups)})</h3>",
      "".join(_groups(groups, thumbs)) or "<p>None found.</p>",
      _more(groups, MAX_GROUPS),
      f"<h3>Likely label errors ({len(errors)})</h3><p class=meta>the "
      "folder's class, the class an out-of-fold model suggests and its "
      "probability; most sure first.</p><div class=gallery id=label-errors>",
      "".join(_figure(r["path"], thumbs,
                      f"folder: {_e(r['label'])}<br><b class=wrong>"
                      f"{_e(r['suggested'])}</b> ({r['confidence']:.2f})")
              for r in errors[:MAX_LABEL_ERRORS]), "</div>",
      "" if errors else "<p>None found.</p>",
      _more(errors, MAX_LABEL_ERRORS),
      f"<h3>Outliers ({len(far)})</h3><p class=meta>far from every other "
      "image (robust z of the mean similarity to the nearest ones).</p>"
      "<div class=gallery id=outliers>",
      "".join(_figure(r["path"], thumbs,
                      f"{_e(r['label'])} ({_e(r['set'])}), z {r['z']:.1f}")
              for r in far[:MAX_OUTLIERS]), "</div>",
      "" if far else "<p>None found.</p>", _more(far, MAX_OUTLIERS),
      _quality(audit, thumbs), "</section>"]
  return "".join(parts)
