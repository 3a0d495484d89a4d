"""Loading a pretrained CNN as a feature extractor.

Both kinds of model end up as the same thing, a `FeatureExtractor`: a frozen
GraphDef plus the names of its float image input and its bottleneck, the input
size and scaling. A TF-Hub module (TF2 SavedModel, or TF1 Hub format that
`hub.load` reads) is frozen into a GraphDef on load, so the rest of the tool
(bottleneck extraction, export) has one code path.
"""

import dataclasses
import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
from google.protobuf import message as pb_message

from cache import fs
from cache.naming import model_tag
from retrain.config import ModelOptions
from retrain.data import preprocess
from retrain.errors import UserError
from retrain.features import safety

tf1 = tf.compat.v1

# Frozen graphs recognised by their node names, so that no tensor flag is
# needed. `input_size` None: read it from the input placeholder's shape.
KNOWN_GRAPHS = (
    dict(name="inception_v3",
         nodes=("Mul", "pool_3/_reshape"),
         input_tensor="Mul:0", bottleneck_tensor="pool_3/_reshape:0",
         input_size=(299, 299), input_mean=128.0, input_std=128.0),
    dict(name="mobilenet_v1",
         nodes=("input", "MobilenetV1/Logits/AvgPool_1a/AvgPool"),
         input_tensor="input:0",
         bottleneck_tensor="MobilenetV1/Logits/AvgPool_1a/AvgPool:0",
         input_size=None, input_mean=127.5, input_std=127.5),
)

# Inception-v3's JPEG input: retrain decodes images itself and feeds the
# graph's resized float image instead.
_INCEPTION_JPEG_INPUT = "DecodeJpeg/contents:0"

# Output names of a TF-Hub signature that hold the feature vector, by priority.
_FEATURE_OUTPUT_KEYS = ("feature_vector", "default", "features", "output_0")
_SIGNATURE_KEYS = ("serving_default", "default", "image_feature_vector")


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureExtractor:
  """A pretrained CNN ready to be imported into a graph.

  Attributes:
    graph_def: the frozen model.
    input_tensor: its float image input, [batch or 1, H, W, 3].
    bottleneck_tensor: the tensor imported as the bottleneck; reshaped to
      [batch, bottleneck_size] by `build_bottleneck`.
    input_size: (H, W).
    input_mean, input_std: the model takes (pixel - mean) / std, with pixels
      in [0, 255].
    bottleneck_size: D.
    tag: the model identity used in cache file names.
    source: what the user passed (graph path or module handle).
    kind: "graph" or "tfhub".
    preprocessing: how images are decoded and resized for it (part of `tag`).
    members: for several models in one (kind "combined", combined.py): the
      models as given; parts: the same models as their vectors are
      extracted and cached (each fed at this model's input size).
  """
  graph_def: tf1.GraphDef
  input_tensor: str
  bottleneck_tensor: str
  input_size: Tuple[int, int]
  input_mean: float
  input_std: float
  bottleneck_size: int
  tag: str
  source: str
  kind: str
  preprocessing: preprocess.Preprocessing = preprocess.Preprocessing()
  members: Tuple["FeatureExtractor", ...] = ()
  parts: Tuple["FeatureExtractor", ...] = ()

  def describe(self) -> Dict[str, object]:
    """JSON-friendly facts about the model, for exported metadata."""
    facts = dict(kind=self.kind, source=self.source, tag=self.tag,
                 input_tensor=self.input_tensor,
                 bottleneck_tensor=self.bottleneck_tensor,
                 input_size=list(self.input_size), input_mean=self.input_mean,
                 input_std=self.input_std,
                 bottleneck_size=self.bottleneck_size,
                 preprocessing=self.preprocessing.describe())
    if self.members:
      facts["models"] = [m.describe() for m in self.members]
    return facts


def build_bottleneck(fx: FeatureExtractor, images: tf.Tensor) -> tf.Tensor:
  """Adds the CNN to the default graph.

  Args:
    fx: the model.
    images: float32 [batch, H, W, 3], RGB pixels in [0, 255].
  Returns:
    float32 [batch, D] bottlenecks.
  """
  return import_cnn(fx, scale_images(fx, images))


def scale_images(fx: FeatureExtractor, images: tf.Tensor) -> tf.Tensor:
  """RGB pixels in [0, 255] -> the model's input, (x - mean) / std."""
  return (images - fx.input_mean) * (1.0 / fx.input_std)


def import_cnn(fx: FeatureExtractor, model_input: tf.Tensor) -> tf.Tensor:
  """Adds the CNN (as "module/...") fed with its own, scaled, input.

  Args:
    model_input: float32 [batch, H, W, 3], already scaled (scale_images).
  Returns:
    float32 [batch, D] bottlenecks.
  """
  out, = tf1.import_graph_def(fx.graph_def,
                              input_map={fx.input_tensor: model_input},
                              return_elements=[fx.bottleneck_tensor],
                              name="module")
  return tf.reshape(out, [-1, fx.bottleneck_size], name="bottleneck")


def load_feature_extractor(options: Union[ModelOptions,
                                         Sequence[ModelOptions]],
                           cache_dir: Optional[str] = None) -> FeatureExtractor:
  """Loads the model `options` names, or several as one (combined.py).

  Args:
    options: the model, or a sequence of models.
    cache_dir: where a TF-Hub module frozen to a GraphDef is kept (in
      MODULE_CACHE), so later runs skip loading and freezing it (seconds).
  Raises:
    UserError: missing file, not a model, wrong tensor names, a module that
      is not an image feature vector, or a handle that cannot be downloaded.
  """
  if not isinstance(options, ModelOptions):
    options = list(options)
    if len(options) != 1:
      from retrain.features import combined  # pylint: disable=g-import-not-at-top
      return combined.combine([load_feature_extractor(o, cache_dir)
                               for o in options])
    options = options[0]
  if options.architecture:  # The classic tool's name for a frozen graph.
    from retrain.features import classic_models  # pylint: disable=g-import-not-at-top
    options = classic_models.resolve(options)
  if options.preprocessing not in preprocess.PREPROCESSINGS:
    raise UserError(f"--preprocessing={options.preprocessing}: must be one of "
                    f"{', '.join(preprocess.PREPROCESSINGS)}")
  if options.graph:
    return _load_graph(options)
  if not options.tfhub_module:
    raise UserError("no model given: pass --graph=PATH.pb or "
                    "--tfhub_module=HANDLE_OR_DIR")
  return _load_tfhub(options, cache_dir)


# ---------------------------------------------------------------- GraphDef --

def _tensor_name(name: str) -> str:
  return name if ":" in name else name + ":0"


def _node_name(tensor: str) -> str:
  return tensor.split(":")[0].lstrip("^")


def _read_graph_def(path: str) -> tf1.GraphDef:
  try:
    if not fs.isfile(path):
      raise UserError(f"--graph={path}: no such file; pass a frozen GraphDef "
                      "(.pb) file")
    data = fs.read_bytes(path)
  except fs.StorageError as e:
    raise UserError(f"--graph={path}: {e.strerror}") from None
  graph_def = tf1.GraphDef()
  try:
    graph_def.ParseFromString(data)
  except (pb_message.DecodeError, RuntimeError, ValueError):
    graph_def = None
  if graph_def is None or not graph_def.node:
    raise UserError(f"--graph={path}: not a TensorFlow GraphDef; pass a "
                    "frozen graph (.pb), or a SavedModel folder with "
                    "--tfhub_module")
  return graph_def


def _candidates(graph_def: tf1.GraphDef, want: str) -> List[str]:
  """A few plausible tensor names, for error messages."""
  nodes = graph_def.node
  if want == "input":
    picks = [n.name for n in nodes if n.op == "Placeholder"]
    picks += [n.name for n in nodes if n.name in ("Mul", "input", "images")]
  else:
    keys = ("pool", "bottleneck", "feature", "reshape", "flatten", "squeeze")
    picks = [n.name for n in nodes
             if any(k in n.name.lower() for k in keys) and n.op != "Const"]
    picks = picks[-6:] + [n.name for n in nodes[-3:]]
  seen = []
  for p in picks:
    if p + ":0" not in seen:
      seen.append(p + ":0")
  return seen[:6]


def _known_graph(node_names: set) -> Optional[dict]:
  for known in KNOWN_GRAPHS:
    if all(n in node_names for n in known["nodes"]):
      return known
  return None


def _placeholder_size(graph_def: tf1.GraphDef,
                      tensor: str) -> Optional[Tuple[int, int]]:
  for node in graph_def.node:
    if node.name == _node_name(tensor) and "shape" in node.attr:
      dims = [d.size for d in node.attr["shape"].shape.dim]
      if len(dims) == 4 and dims[1] > 0 and dims[2] > 0:
        return dims[1], dims[2]
  return None


def _batch_safe_bottleneck(graph_def: tf1.GraphDef, tensor: str) -> str:
  """Sees through a Reshape that fixes the batch at 1 (Inception's pool_3/_reshape).

  Such a reshape only flattens one image's features; `build_bottleneck`
  flattens per image itself, so importing its input lets the graph run on
  batches.
  """
  by_name = {n.name: n for n in graph_def.node}
  node = by_name.get(_node_name(tensor))
  if node is None or node.op != "Reshape" or not tensor.endswith(":0"):
    return tensor
  shape_node = by_name.get(_node_name(node.input[1]))
  if shape_node is None or shape_node.op != "Const":
    return tensor
  shape = tf.make_ndarray(shape_node.attr["value"].tensor).reshape(-1)
  if len(shape) >= 1 and shape[0] == 1:
    return _tensor_name(node.input[0])
  return tensor


def _load_graph(options: ModelOptions) -> FeatureExtractor:
  path = options.graph
  graph_def = _read_graph_def(path)
  _check_safe(graph_def, f"--graph={path}", options.allow_unsafe_graph_ops)
  node_names = {n.name for n in graph_def.node}
  known = _known_graph(node_names)
  input_tensor = options.input_tensor
  if (known and known["name"] == "inception_v3" and
      input_tensor and _tensor_name(input_tensor) == _INCEPTION_JPEG_INPUT):
    input_tensor = None  # retrain decodes JPEGs itself and feeds Mul:0.
  input_tensor = _tensor_name(input_tensor or
                              (known["input_tensor"] if known else ""))
  bottleneck = _tensor_name(options.bottleneck_tensor or
                            (known["bottleneck_tensor"] if known else ""))
  for flag, tensor, want in (("--input_tensor", input_tensor, "input"),
                             ("--bottleneck_tensor", bottleneck, "bottleneck")):
    if tensor == ":0":
      raise UserError(
          f"--graph={path} is not a graph retrain recognises: pass {flag} "
          f"(candidates: {', '.join(_candidates(graph_def, want))})")
    if _node_name(tensor) not in node_names:
      raise UserError(
          f"{flag}={tensor} is not in --graph={path}; candidates: "
          f"{', '.join(_candidates(graph_def, want))}")
  size = (options.input_size or (known and known["input_size"]) or
          _placeholder_size(graph_def, input_tensor))
  if not size:
    raise UserError(f"--graph={path}: cannot tell the input size of "
                    f"{input_tensor}; pass --input_size=HEIGHT,WIDTH")
  mean = options.input_mean
  std = options.input_std
  if known:
    mean = known["input_mean"] if mean is None else mean
    std = known["input_std"] if std is None else std
  if mean is None or std is None:
    raise UserError(f"--graph={path}: pass --input_mean and --input_std (the "
                    "graph takes (pixel - mean) / std; e.g. 127.5 and 127.5 "
                    "for inputs in [-1, 1], 0 and 255 for [0, 1])")
  source_tensor = _batch_safe_bottleneck(graph_def, bottleneck)
  rule = preprocess.PREPROCESSINGS[options.preprocessing]
  digest = _digest(_files_digest([path]), rule, input_tensor, bottleneck,
                   size, mean, std)
  name = os.path.join(os.path.basename(os.path.dirname(os.path.abspath(path))),
                      os.path.splitext(os.path.basename(path))[0])
  fx = FeatureExtractor(graph_def, input_tensor, source_tensor,
                        (int(size[0]), int(size[1])), float(mean), float(std),
                        0, model_tag(name, digest), path, "graph", rule)
  return _with_bottleneck_size(fx, f"--bottleneck_tensor={bottleneck}")


def _files_digest(files: Sequence[str]) -> str:
  """A digest of the files' contents (and their order)."""
  h = hashlib.sha1()
  for path in files:
    file_hash = hashlib.sha1()
    if fs.has_scheme(path):
      file_hash.update(fs.read_bytes(path))
    else:
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          file_hash.update(chunk)
    h.update(file_hash.digest())
  return h.hexdigest()


def _digest(files_digest: str, rule: preprocess.Preprocessing,
            *params) -> str:
  """A digest of the model files' contents and of how the model is used."""
  h = hashlib.sha1(files_digest.encode())
  h.update(json.dumps([rule.version()] + [str(p) for p in params]
                      ).encode())
  return h.hexdigest()


def _check_safe(graph_def: tf1.GraphDef, what: str, allow: bool) -> None:
  unsafe = safety.find_unsafe_ops(graph_def)
  if unsafe and not allow:
    raise UserError(
        f"{what} contains ops that can read or write files or run code "
        f"({', '.join(unsafe)}); refusing to import it. Pass "
        "--allow_unsafe_graph_ops only if you trust where it came from")


def _with_bottleneck_size(fx: FeatureExtractor, what: str) -> FeatureExtractor:
  """Learns (and checks) the bottleneck size from the graph's static shapes,
  or if they do not tell, by running the model on two blank images."""
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [None, *fx.input_size, 3])
    scaled = (images - fx.input_mean) * (1.0 / fx.input_std)
    try:
      out, = tf1.import_graph_def(fx.graph_def,
                                  input_map={fx.input_tensor: scaled},
                                  return_elements=[fx.bottleneck_tensor],
                                  name="module")
    except (ValueError, TypeError) as e:
      raise UserError(f"{what}: cannot feed the model images of shape "
                      f"[batch, {fx.input_size[0]}, {fx.input_size[1]}, 3] "
                      f"at {fx.input_tensor} ({_first_line(e)})")
    static = out.shape
    if (static.rank is not None and static.rank >= 2 and
        static[0] is None and static[1:].is_fully_defined()):
      per_image = [d for d in static[1:].as_list() if d != 1]
      if len(per_image) == 1:
        return dataclasses.replace(fx, bottleneck_size=int(per_image[0]))
    with tf1.Session(graph=graph) as sess:
      blank = np.zeros([2, *fx.input_size, 3], np.float32)
      try:
        value = sess.run(out, {images: blank})
      except tf.errors.OpError as e:
        raise UserError(f"{what}: the model fails on a batch of images "
                        f"({_first_line(e.message)}); check --input_tensor "
                        "and --input_size")
  per_image = [d for d in value.shape[1:] if d != 1]
  if value.shape[0] != 2 or len(per_image) != 1:
    raise UserError(
        f"{what} gives shape {list(value.shape[1:])} per image, not a vector "
        "after squeezing; name a pooled feature tensor (e.g. the input of "
        "the final classification layer)")
  return dataclasses.replace(fx, bottleneck_size=int(per_image[0]))


def _first_line(e) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# ----------------------------------------------------------------- TF-Hub --

def _resolve_handle(handle: str) -> str:
  """A local SavedModel folder for `handle` (downloading it if it is a URL)."""
  if os.path.isdir(handle):
    path = handle
  elif "://" in handle:
    import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
    from absl import logging  # pylint: disable=g-import-not-at-top
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)  # Quiet "Downloading..." notes.
    try:
      path = hub.resolve(handle)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(
          f"--tfhub_module={handle}: could not download it "
          f"({_first_line(e)[:120]}); without internet, download the module "
          "elsewhere and pass --tfhub_module=/path/to/saved_model_dir, or "
          "pass --graph=/path/to/frozen_graph.pb")
    finally:
      logging.set_verbosity(verbosity)
  elif os.path.isfile(handle):
    raise UserError(f"--tfhub_module={handle} is a file; pass a SavedModel "
                    "folder, or a frozen GraphDef with --graph")
  else:
    raise UserError(f"--tfhub_module={handle}: no such folder; pass a TF-Hub "
                    "URL or a local SavedModel folder")
  if not any(os.path.isfile(os.path.join(path, f))
             for f in ("saved_model.pb", "saved_model.pbtxt")):
    raise UserError(f"--tfhub_module={handle}: {path} is not a SavedModel "
                    "(no saved_model.pb); pass a TF-Hub image feature vector "
                    "module folder")
  return path


def _is_image_spec(spec) -> bool:
  return (isinstance(spec, tf.TensorSpec) and spec.dtype == tf.float32 and
          spec.shape.rank == 4 and spec.shape[-1] in (3, None))


def _describe_fn(name: str, fn) -> str:
  def fmt(spec):
    if isinstance(spec, tf.TensorSpec):
      return f"{spec.dtype.name} {spec.shape.as_list()}"
    return type(spec).__name__
  args, kwargs = fn.structured_input_signature
  ins = [fmt(a) for a in args] + [f"{k}: {fmt(v)}" for k, v in kwargs.items()]
  outs = tf.nest.map_structure(fmt, fn.structured_outputs)
  return f"{name}({', '.join(ins)}) -> {outs}"


def _feature_output(fn) -> Optional[int]:
  """The index, in fn.outputs, of the feature vector output, or None."""
  outputs = fn.structured_outputs
  flat = tf.nest.flatten(outputs)
  if isinstance(outputs, dict):
    keys = sorted(outputs)  # tf.nest flattens dicts in sorted key order.
    for key in _FEATURE_OUTPUT_KEYS:
      if key in outputs and outputs[key].shape.rank == 2:
        return keys.index(key)
  rank2 = [i for i, t in enumerate(flat) if t.shape.rank == 2]
  return rank2[0] if len(rank2) == 1 else None


def _pick_signature(obj, handle: str):
  """(concrete function, output index) of a module's feature vector signature."""
  described = []
  signatures = getattr(obj, "signatures", {}) or {}
  for key in list(_SIGNATURE_KEYS) + sorted(signatures):
    if key not in signatures:
      continue
    fn = signatures[key]
    args, kwargs = fn.structured_input_signature
    specs = list(args) + list(kwargs.values())
    out = _feature_output(fn)
    if len(specs) == 1 and _is_image_spec(specs[0]) and out is not None:
      return fn, out, specs[0]
    described.append(_describe_fn(key, fn))
  call = getattr(obj, "__call__", None)
  for fn in getattr(call, "concrete_functions", []) or []:
    args, _ = fn.structured_input_signature
    if args and _is_image_spec(args[0]):
      return None, None, args[0]
    described.append(_describe_fn("__call__", fn))
  raise UserError(
      f"--tfhub_module={handle} is not an image feature vector module: "
      "expected a signature taking float32 images [batch, height, width, 3] "
      "and returning [batch, features]; found "
      f"{'; '.join(described[:3]) or 'no signatures'}")


# Folder (in the cache_dir given to load_feature_extractor) of TF-Hub modules
# frozen to GraphDefs: <key>.pb and .json (and of export graph templates,
# see export.cached_inference_graph_template).
MODULE_CACHE = ".frozen_modules"
_FREEZE_VERSION = "1"


def _frozen_module_paths(cache_dir: str, files_digest: str,
                         options: ModelOptions) -> Tuple[str, str]:
  key = hashlib.sha1(json.dumps(
      [_FREEZE_VERSION, files_digest, list(options.input_size or [])]
  ).encode()).hexdigest()[:16]
  stem = fs.join(cache_dir, MODULE_CACHE, key)
  return stem + ".pb", stem + ".json"


def _read_frozen_module(paths: Tuple[str, str]) -> Optional[Tuple]:
  """(graph_def, input tensor, bottleneck tensor, size) or None."""
  try:
    meta = json.loads(fs.read_bytes(paths[1]))
    graph_def = tf1.GraphDef()
    graph_def.ParseFromString(fs.read_bytes(paths[0]))
    return (graph_def, meta["input_tensor"], meta["bottleneck_tensor"],
            tuple(meta["input_size"]))
  except (OSError, ValueError, KeyError, TypeError, pb_message.DecodeError):
    return None


def _write_frozen_module(paths: Tuple[str, str], graph_def: tf1.GraphDef,
                         input_tensor: str, bottleneck: str,
                         size: Tuple[int, int]) -> None:
  """Keeps the frozen module for later runs; a failure only costs time."""
  try:
    fs.write_atomic(paths[0], graph_def.SerializeToString())
    fs.write_atomic(paths[1], json.dumps(dict(
        input_tensor=input_tensor, bottleneck_tensor=bottleneck,
        input_size=list(size))).encode())
  except OSError:
    pass


def _freeze_module(options: ModelOptions, path: str):
  """Loads a SavedModel and freezes its feature vector function.

  Returns (graph_def, input tensor, bottleneck tensor, (H, W)).
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow_hub as hub
  from tensorflow.python.framework import convert_to_constants
  handle = options.tfhub_module
  try:
    obj = hub.load(path)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"--tfhub_module={handle}: cannot load the SavedModel "
                    f"({_first_line(e)[:160]})")
  fn, out_index, spec = _pick_signature(obj, handle)
  static = spec.shape[1:3].as_list()
  if None not in static:
    size = tuple(static)
  elif options.input_size:
    size = tuple(options.input_size)
  else:
    raise UserError(f"--tfhub_module={handle} does not fix its input size; "
                    "pass --input_size=HEIGHT,WIDTH")
  if fn is None:  # A module callable on images, without a usable signature.
    call = tf.function(lambda images: obj(images),
                       input_signature=[tf.TensorSpec([None, *size, 3],
                                                      tf.float32)])
    fn = call.get_concrete_function()
    out_index = _feature_output(fn)
    if out_index is None:
      raise UserError(f"--tfhub_module={handle} is not an image feature "
                      "vector module: calling it on images gives "
                      f"{fn.structured_outputs}, not [batch, features]")
  frozen = convert_to_constants.convert_variables_to_constants_v2(fn)
  inputs = [t for t in frozen.inputs if t.dtype == tf.float32]
  return (frozen.graph.as_graph_def(), inputs[0].name,
          frozen.outputs[out_index].name, size)


def _load_tfhub(options: ModelOptions,
                cache_dir: Optional[str] = None) -> FeatureExtractor:
  handle = options.tfhub_module
  path = _resolve_handle(handle)
  files = []
  for root, dirs, names in os.walk(path):
    dirs.sort()
    files += [os.path.join(root, n) for n in sorted(names)]
  files_digest = _files_digest(files)
  paths = (_frozen_module_paths(cache_dir, files_digest, options)
           if cache_dir else None)
  cached = _read_frozen_module(paths) if paths else None
  if cached:
    graph_def, input_tensor, bottleneck, size = cached
  else:
    graph_def, input_tensor, bottleneck, size = _freeze_module(options, path)
  if options.input_size and tuple(options.input_size) != tuple(size):
    raise UserError(f"--input_size={options.input_size[0]},"
                    f"{options.input_size[1]} does not match the module's "
                    f"input size {size[0]},{size[1]}; leave it out")
  # Checked every time, cached or not: the cache folder is not trusted more
  # than the module.
  _check_safe(graph_def, f"--tfhub_module={handle}",
              options.allow_unsafe_graph_ops)
  mean = 0.0 if options.input_mean is None else options.input_mean
  std = 255.0 if options.input_std is None else options.input_std
  rule = preprocess.PREPROCESSINGS[options.preprocessing]
  digest = _digest(files_digest, rule, input_tensor, bottleneck, size, mean,
                   std)
  name = handle.rstrip("/")
  name = "_".join(name.split("/")[-2:]) if "://" in name else (
      os.path.basename(os.path.dirname(os.path.abspath(name))) + "_" +
      os.path.basename(name))
  fx = FeatureExtractor(graph_def, input_tensor, bottleneck,
                        (int(size[0]), int(size[1])), float(mean), float(std),
                        0, model_tag(name, digest), handle, "tfhub", rule)
  fx = _with_bottleneck_size(fx, f"--tfhub_module={handle}")
  if paths and not cached:
    _write_frozen_module(paths, graph_def, input_tensor, bottleneck, size)
  return fx
