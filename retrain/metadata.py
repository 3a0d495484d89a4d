"""Where an export's JSON description lives, and the paths inside it.

No TensorFlow: label_image reads these on devices that have only LiteRT.
Paths inside the JSON files are relative to the JSON file, so a copied or
moved export folder keeps working.
"""

import os

# The JSON description inside a SavedModel folder.
SAVED_MODEL_METADATA = "retrain.json"


def metadata_path(export_path: str) -> str:
  """Where the JSON description of a .pb or .tflite export lives: beside it."""
  return os.path.splitext(export_path)[0] + ".json"


def relative_to(target: str, json_path: str) -> str:
  """`target` as recorded in the JSON file `json_path`: relative to it."""
  return os.path.relpath(os.path.abspath(target),
                         os.path.dirname(os.path.abspath(json_path)))


def resolve(recorded: str, json_path: str) -> str:
  """A path recorded in the JSON file `json_path`, relative to that file
  (an absolute path, as exports before retrain 0.2 wrote, stays as is)."""
  return os.path.join(os.path.dirname(os.path.abspath(json_path)), recorded)
