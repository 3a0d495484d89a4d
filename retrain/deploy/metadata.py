"""Where an export's JSON description lives, and the paths inside it.

No TensorFlow: label_image reads these on devices that have only LiteRT.
Paths inside the JSON files are relative to the JSON file, so a copied or
moved export folder keeps working.
"""

import os
import posixpath

# The JSON description inside a SavedModel folder.
SAVED_MODEL_METADATA = "retrain.json"


def metadata_path(export_path: str) -> str:
  """Where the JSON description of a .pb or .tflite export lives: beside it."""
  return os.path.splitext(export_path)[0] + ".json"


def _split_url(path: str):
  """("scheme://host", "/rest") of a URL, or None for a local path."""
  head, sep, rest = path.partition("://")
  if not sep:
    return None
  host, _, tail = rest.partition("/")
  return f"{head}://{host}", "/" + tail


def relative_to(target: str, json_path: str) -> str:
  """`target` as recorded in the JSON file `json_path`: relative to it (a
  URL on another bucket or scheme is recorded whole)."""
  url, json_url = _split_url(target), _split_url(json_path)
  if url or json_url:
    if not (url and json_url and url[0] == json_url[0]):
      return target
    return posixpath.relpath(url[1], posixpath.dirname(json_url[1]))
  return os.path.relpath(os.path.abspath(target),
                         os.path.dirname(os.path.abspath(json_path)))


def resolve(recorded: str, json_path: str) -> str:
  """A path recorded in the JSON file `json_path`, relative to that file
  (an absolute path, as exports before retrain 0.2 wrote, stays as is)."""
  if _split_url(recorded):
    return recorded
  url = _split_url(json_path)
  if url:
    return url[0] + posixpath.normpath(posixpath.join(
        posixpath.dirname(url[1]), recorded))
  return os.path.join(os.path.dirname(os.path.abspath(json_path)), recorded)
