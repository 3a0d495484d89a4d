"""TFLite model metadata, written by retrain itself: what MediaPipe Tasks'
ImageClassifier (Android, iOS, web, Python) and the TFLite Task Library read
to use a .tflite file with no other file or setting.

The metadata is a `ModelMetadata` flatbuffer (schema metadata_schema.fbs
1.5.0, file identifier "M001") stored as one more buffer of the model and
named by a model `metadata` entry "TFLITE_METADATA"; its associated files
(the labels) are a zip archive appended to the model file. The tables are
built here field by field with the `flatbuffers` runtime, from the schema's
layout (a union takes two slots: its type, then its value); the model is
re-packed with TensorFlow's own TFLite schema module. LiteRT and every other
interpreter ignore both, so the file runs unchanged.

What goes in: the model's name, description and version; the input's
ImageProperties (RGB, its size), NormalizationOptions (mean and std a
client applies before feeding it: 0 and 1 for retrain's default input,
which scales inside) and value range; the output's description and the
labels as a TENSOR_AXIS_LABELS file; the export's JSON description as a
model-level file.
"""

import io
import zipfile
from typing import Dict, NamedTuple, Optional, Sequence

import flatbuffers

METADATA_NAME = "TFLITE_METADATA"
IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"
DESCRIPTION_FILE = "retrain.json"

# Enums of metadata_schema.fbs.
_DESCRIPTIONS, _TENSOR_AXIS_LABELS = 1, 2  # AssociatedFileType
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2  # ContentProperties
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions
_RGB = 1  # ColorSpaceType


class ImageInput(NamedTuple):
  """The model's image input as a client should feed it."""
  height: int
  width: int
  mean: float  # The client feeds (pixel - mean) / std.
  std: float
  description: str


class ClassifierInfo(NamedTuple):
  name: str
  description: str
  version: str
  author: str
  image: ImageInput
  output_description: str
  labels: Sequence[str]
  description_json: Optional[bytes] = None  # The export's JSON file.


class _Writer:
  """Small helpers over flatbuffers.Builder for the tables used here."""

  def __init__(self):
    self.b = flatbuffers.Builder(1024)

  def string(self, text: Optional[str]):
    return None if text is None else self.b.CreateString(text)

  def offsets(self, items: Sequence[int]) -> int:
    self.b.StartVector(4, len(items), 4)
    for item in reversed(items):
      self.b.PrependUOffsetTRelative(item)
    return self.b.EndVector()

  def floats(self, values: Sequence[float]) -> int:
    self.b.StartVector(4, len(values), 4)
    for value in reversed(values):
      self.b.PrependFloat32(value)
    return self.b.EndVector()

  def table(self, fields: Dict[int, tuple]) -> int:
    """fields: slot -> ("offset", value) | ("int8"|"uint8"|"int32"|"uint32",
    value); None values are left out (the schema's default)."""
    present = {k: v for k, v in fields.items() if v[1] is not None}
    self.b.StartObject(max(fields) + 1 if fields else 0)
    for slot, (kind, value) in sorted(present.items()):
      if kind == "offset":
        self.b.PrependUOffsetTRelativeSlot(slot, value, 0)
      elif kind == "int8":
        self.b.PrependInt8Slot(slot, value, 0)
      elif kind == "uint8":
        self.b.PrependUint8Slot(slot, value, 0)
      elif kind == "int32":
        self.b.PrependInt32Slot(slot, value, 0)
      elif kind == "uint32":
        self.b.PrependUint32Slot(slot, value, 0)
      else:
        raise ValueError(kind)
    return self.b.EndObject()

  def associated_file(self, name: str, description: str,
                      file_type: int) -> int:
    n, d = self.string(name), self.string(description)
    return self.table({0: ("offset", n), 1: ("offset", d),
                       2: ("int8", file_type)})


def metadata_flatbuffer(info: ClassifierInfo) -> bytes:
  """The ModelMetadata flatbuffer of an image classifier."""
  w = _Writer()
  image = info.image
  # Input tensor: an RGB image of the model's size, normalized by the client.
  size = w.table({0: ("uint32", image.width), 1: ("uint32", image.height)})
  props = w.table({0: ("int8", _RGB), 1: ("offset", size)})
  value_range = w.table({0: ("int32", 0), 1: ("int32", 255)})
  content = w.table({0: ("uint8", _IMAGE_PROPERTIES), 1: ("offset", props),
                     2: ("offset", value_range)})
  mean, std = w.floats([image.mean]), w.floats([image.std])
  norm = w.table({0: ("offset", mean), 1: ("offset", std)})
  unit = w.table({0: ("uint8", _NORMALIZATION_OPTIONS), 1: ("offset", norm)})
  units = w.offsets([unit])
  # Stats: the range of values the model itself receives.
  low, high = (0 - image.mean) / image.std, (255 - image.mean) / image.std
  stats = w.table({0: ("offset", w.floats([high])),
                   1: ("offset", w.floats([low]))})
  in_name, in_desc = w.string("image"), w.string(image.description)
  input_meta = w.table({0: ("offset", in_name), 1: ("offset", in_desc),
                        3: ("offset", content), 4: ("offset", units),
                        5: ("offset", stats), 6: ("offset", None)})
  # Output tensor: probabilities, one per label.
  labels = w.associated_file(LABELS_FILE, "Labels for the classes, one per "
                             "line, in output order.", _TENSOR_AXIS_LABELS)
  feature = w.table({})
  out_content = w.table({0: ("uint8", _FEATURE_PROPERTIES),
                         1: ("offset", feature)})
  out_stats = w.table({0: ("offset", w.floats([1.0])),
                       1: ("offset", w.floats([0.0]))})
  out_name = w.string("probability")
  out_desc = w.string(info.output_description)
  out_files = w.offsets([labels])
  output_meta = w.table({0: ("offset", out_name), 1: ("offset", out_desc),
                         3: ("offset", out_content), 5: ("offset", out_stats),
                         6: ("offset", out_files)})
  subgraph = w.table({2: ("offset", w.offsets([input_meta])),
                      3: ("offset", w.offsets([output_meta]))})
  model_files = []
  if info.description_json is not None:
    model_files.append(w.associated_file(
        DESCRIPTION_FILE, "retrain's description of this export (JSON): "
        "model, input, resize rule, training results.", _DESCRIPTIONS))
  root = w.table({
      0: ("offset", w.string(info.name)),
      1: ("offset", w.string(info.description)),
      2: ("offset", w.string(info.version)),
      3: ("offset", w.offsets([subgraph])),
      4: ("offset", w.string(info.author)),
      6: ("offset", w.offsets(model_files) if model_files else None),
      7: ("offset", w.string(MIN_PARSER_VERSION)),
  })
  w.b.Finish(root, file_identifier=IDENTIFIER)
  return bytes(w.b.Output())


def _with_metadata_buffer(model: bytes, metadata: bytes) -> bytes:
  """The model flatbuffer with `metadata` as a new buffer named
  TFLITE_METADATA (replacing an earlier one)."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from tensorflow.lite.python import schema_py_generated as schema
  m = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
  m.metadata = [e for e in (m.metadata or [])
                if _name(e.name) != METADATA_NAME]
  buffer = schema.BufferT()
  buffer.data = np.frombuffer(metadata, np.uint8)
  m.buffers.append(buffer)
  entry = schema.MetadataT()
  entry.name = METADATA_NAME
  entry.buffer = len(m.buffers) - 1
  m.metadata.append(entry)
  builder = flatbuffers.Builder(len(model) + len(metadata) + 1024)
  builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
  return bytes(builder.Output())


def _name(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _append_zip(model: bytes, files: Dict[str, bytes]) -> bytes:
  """The model followed by a zip archive of `files` (stored, not
  compressed), as TFLite associated files are kept."""
  out = io.BytesIO(model)
  out.seek(0, io.SEEK_END)
  with zipfile.ZipFile(out, "a", zipfile.ZIP_STORED) as archive:
    for name, data in files.items():
      archive.writestr(name, data)
  return out.getvalue()


def with_metadata(model: bytes, info: ClassifierInfo) -> bytes:
  """A .tflite flatbuffer with classifier metadata and its labels inside."""
  files = {LABELS_FILE: "".join(f"{l}\n" for l in info.labels).encode()}
  if info.description_json is not None:
    files[DESCRIPTION_FILE] = info.description_json
  return _append_zip(_with_metadata_buffer(model, metadata_flatbuffer(info)),
                     files)


def read_metadata(model: bytes) -> Optional[bytes]:
  """The TFLITE_METADATA buffer of a model, if it has one."""
  # pylint: disable=g-import-not-at-top
  from tensorflow.lite.python import schema_py_generated as schema
  m = schema.Model.GetRootAs(bytearray(model), 0)
  for i in range(m.MetadataLength()):
    entry = m.Metadata(i)
    if _name(entry.Name()) == METADATA_NAME:
      return m.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
  return None


def associated_files(model: bytes) -> Dict[str, bytes]:
  """The files zipped at the end of a model (empty if none)."""
  try:
    with zipfile.ZipFile(io.BytesIO(model)) as archive:
      return {n: archive.read(n) for n in archive.namelist()}
  except zipfile.BadZipFile:
    return {}
