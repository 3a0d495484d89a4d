"""The classifier as a TensorFlow.js graph model, for the browser and Node.

A folder (--tfjs_output) holding:

  model.json            format "graph-model": the frozen, optimized GraphDef
                        as JSON with every constant's value moved out, a
                        signature (image -> probabilities), the weights
                        manifest, and userDefinedMetadata (labels, input
                        size, scaling, resize rule)
  group1-shard*of*.bin  the constants' values, little-endian, in manifest
                        order, cut into files of SHARD_BYTES
  labels.txt, retrain.json   as beside every other export
  index.html            a demo page (deploy.demo_page)

Input `image`: float32 [batch, H, W, 3], RGB values in [0, 255] already at
the model's size (the model's own scaling is inside); output `final_result`:
float32 [batch, classes], probabilities in labels order. Weights can be
stored as float16 or as uint8 with a per-tensor min and scale (tfjs's own
manifest `quantization` entries); the graph is float32 either way.

Written by retrain from the graph it exports anyway: the `tensorflowjs`
converter cannot be installed beside current TensorFlow. The graph is made
for tfjs: one plain placeholder, no PlaceholderWithDefault (tfjs 4.22 hands
out a default's tensor uncopied and frees it), no string outputs, int64
constants stored as int32 (tfjs has no int64).
"""

import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import json_format

from cache import fs
from retrain import __version__
from retrain.deploy import demo_page, export
from retrain.deploy.metadata import SAVED_MODEL_METADATA
from retrain.features.model import FeatureExtractor

tf1 = tf.compat.v1

MODEL_JSON = "model.json"
LABELS = "labels.txt"
SHARD_BYTES = 4 * 1024 * 1024
QUANTIZATIONS = ("none", "float16", "uint8")

_DTYPES = {tf.float32.as_datatype_enum: "float32",
           tf.int32.as_datatype_enum: "int32",
           tf.int64.as_datatype_enum: "int32",  # Stored as int32.
           tf.bool.as_datatype_enum: "bool"}


def tfjs_graph_def(fx: FeatureExtractor, weights: np.ndarray,
                   biases: np.ndarray,
                   final_tensor_name: str = "final_result",
                   unknown=None) -> tf1.GraphDef:
  """The whole classifier, image [batch, H, W, 3] in [0, 255] ->
  final_result [batch, classes], frozen, optimized and made for tfjs."""
  graph = export.build_float_graph(fx, weights, biases, final_tensor_name,
                                   batch=None, unknown=unknown)
  graph_def = export.optimize_for_inference(graph, [final_tensor_name])
  out = tf1.GraphDef()
  out.versions.CopyFrom(graph_def.versions)
  for source in graph_def.node:
    node = out.node.add()
    node.CopyFrom(source)
    if node.op == "PlaceholderWithDefault":  # Its default, copied.
      node.op = "Identity"
      node.attr["T"].type = node.attr["dtype"].type
      del node.attr["dtype"]
      del node.attr["shape"]
    for name in [a for a in node.attr if a.startswith("_")]:
      del node.attr[name]  # Colocation and shape hints: unused by tfjs.
  if graph_def.library.function:
    raise ValueError("the classifier graph has functions, which this writer "
                     "does not convert")
  return out


def _quantize(value: np.ndarray, quantize: str
              ) -> Tuple[bytes, Dict[str, object]]:
  """(bytes, manifest quantization entry or {}) of one float32 tensor."""
  if quantize == "float16":
    return value.astype("<f2").tobytes(), {"dtype": "float16",
                                           "original_dtype": "float32"}
  if quantize == "uint8":
    low, high = (float(value.min()), float(value.max())) if value.size else (
        0.0, 0.0)
    scale = (high - low) / 255 or 1.0
    q = np.clip(np.round((value - low) / scale), 0, 255).astype(np.uint8)
    return q.tobytes(), {"dtype": "uint8", "min": low, "scale": scale,
                         "original_dtype": "float32"}
  return value.astype("<f4").tobytes(), {}


def split_weights(graph_def: tf1.GraphDef, quantize: str = "none"
                  ) -> Tuple[tf1.GraphDef, List[Dict[str, object]], bytes]:
  """(the GraphDef with Const values removed, weight specs in order, their
  bytes). tfjs finds each weight by its Const node's name."""
  topology = tf1.GraphDef()
  topology.CopyFrom(graph_def)
  specs, chunks = [], []
  for node in topology.node:
    if node.op != "Const":
      continue
    dtype = node.attr["dtype"].type
    if dtype not in _DTYPES:
      raise ValueError(f"constant {node.name} has dtype "
                       f"{tf.dtypes.as_dtype(dtype).name}, which tfjs lacks")
    value = tf.make_ndarray(node.attr["value"].tensor)
    spec = {"name": node.name, "shape": list(value.shape),
            "dtype": _DTYPES[dtype]}
    if spec["dtype"] == "float32":
      # The unknown class's kept photos: 8 bits per component moves the
      # cosines it thresholds sharply; they keep 16.
      mode = ("float16" if quantize == "uint8" and
              node.name == export.PROTOTYPES_NODE else quantize)
      data, quantization = _quantize(value.astype(np.float32), mode)
      if quantization:
        spec["quantization"] = quantization
    elif spec["dtype"] == "int32":
      data = value.astype("<i4").tobytes()
      node.attr["dtype"].type = tf.int32.as_datatype_enum
    else:
      data = value.astype(np.uint8).tobytes()
    del node.attr["value"]
    specs.append(spec)
    chunks.append(data)
  return topology, specs, b"".join(chunks)


def _tensor_info(name: str, shape: Sequence[int]) -> Dict[str, object]:
  return {"name": name, "dtype": "DT_FLOAT",
          "tensorShape": {"dim": [{"size": str(d)} for d in shape]}}


def model_json(graph_def: tf1.GraphDef, quantize: str, shard_paths_of,
               input_size: Tuple[int, int], classes: int,
               final_tensor_name: str, metadata: Dict[str, object]
               ) -> Tuple[Dict[str, object], List[Tuple[str, bytes]]]:
  """(model.json's content, [(shard file name, bytes)])."""
  topology, specs, data = split_weights(graph_def, quantize)
  count = max(1, -(-len(data) // SHARD_BYTES))
  names = shard_paths_of(count)
  shards = [(names[i], data[i * SHARD_BYTES:(i + 1) * SHARD_BYTES])
            for i in range(count)]
  h, w = input_size
  return {
      "format": "graph-model",
      "generatedBy": tf.__version__,
      "convertedBy": f"retrain {__version__}",
      "modelTopology": json_format.MessageToDict(topology),
      "weightsManifest": [{"paths": names, "weights": specs}],
      "signature": {
          "inputs": {export.IMAGE_INPUT: _tensor_info(
              export.IMAGE_INPUT + ":0", [-1, h, w, 3])},
          "outputs": {"probabilities": _tensor_info(
              final_tensor_name + ":0", [-1, classes])},
      },
      "userDefinedMetadata": metadata,
  }, shards


def _shard_names(count: int) -> List[str]:
  return [f"group1-shard{i + 1}of{count}.bin" for i in range(count)]


def quantization_check(content: Dict[str, object],
                       shards: Sequence[Tuple[str, bytes]],
                       images: np.ndarray, reference: np.ndarray,
                       final_tensor_name: str) -> Dict[str, object]:
  """How far quantized weights move the answers: the export rebuilt as tfjs
  reads it, run on `images` (float32 [n, H, W, 3], 0..255) against the
  float model's probabilities `reference` [n, classes]."""
  data = dict(shards)
  graph = tf.Graph()
  with graph.as_default():
    tf1.import_graph_def(graph_def_of(content, data.__getitem__), name="")
  with tf1.Session(graph=graph) as sess:
    got = sess.run(final_tensor_name + ":0", {export.IMAGE_INPUT + ":0":
                                              images})
  return {"images": int(len(images)),
          "top1_agreement": float(np.mean(got.argmax(1) ==
                                          reference.argmax(1))),
          "max_probability_difference": float(np.abs(got - reference).max())}


def write_tfjs(folder: str, fx: FeatureExtractor, weights: np.ndarray,
               biases: np.ndarray, labels: Sequence[str],
               metadata: Dict[str, object], quantize: str = "none",
               final_tensor_name: str = "final_result",
               check: Optional[Tuple[np.ndarray, np.ndarray]] = None,
               unknown=None) -> List[str]:
  """Writes the tfjs folder whole (replacing an older one only once
  complete); returns the files written, relative to it.

  check: (images float32 [n, H, W, 3] in 0..255, the float model's
  probabilities [n, classes]): with quantized weights, the export is run on
  them and the agreement recorded in retrain.json and logged, with a
  warning when any top class changes.
  """
  if quantize not in QUANTIZATIONS:
    raise ValueError(f"quantize={quantize}")
  h, w = fx.input_size
  user = dict(
      metadata, labels=list(labels), input_size=[h, w],
      input={"name": export.IMAGE_INPUT, "dtype": "float32",
             "shape": [-1, h, w, 3],
             "description": (f"RGB values in [0, 255], resized to {h}x{w} "
                             "by the resize rule; the model's scaling "
                             "happens inside")},
      input_scaling={"mean": 0.0, "std": 1.0},
      model_scaling={"mean": fx.input_mean, "std": fx.input_std},
      output={"name": final_tensor_name, "dtype": "float32",
              "shape": [-1, len(labels)],
              "description": "softmax probabilities in labels order"},
      weights_quantization=quantize)
  content, shards = model_json(
      tfjs_graph_def(fx, weights, biases, final_tensor_name, unknown),
      quantize,
      _shard_names, (h, w), len(labels), final_tensor_name, user)
  description = dict(user, format=export.METADATA_FORMAT, export="tfjs",
                     model_json=MODEL_JSON, labels=LABELS,
                     demo_page=demo_page.PAGE)
  if quantize != "none" and check is not None and len(check[0]):
    found = quantization_check(content, shards, check[0], check[1],
                               final_tensor_name)
    description["quantization_check"] = found
    log = logging.warning if found["top1_agreement"] < 1 else logging.info
    log("--tfjs_quantize=%s: the top class of %d of %d test photos is the "
        "float model's (probabilities within %.3f)%s", quantize,
        round(found["top1_agreement"] * found["images"]), found["images"],
        found["max_probability_difference"],
        "; --tfjs_quantize=float16 keeps them" if found["top1_agreement"] < 1
        else "")
  written = []
  with export.staged_dir(folder, (SAVED_MODEL_METADATA, MODEL_JSON)) as out:
    for name, data in shards:
      with open(os.path.join(out, name), "wb") as f:
        f.write(data)
      written.append(name)
    export.write_labels(os.path.join(out, LABELS), labels)
    fs.write_text(os.path.join(out, SAVED_MODEL_METADATA),
                  json.dumps(description, indent=2, sort_keys=True) + "\n")
    fs.write_text(os.path.join(out, demo_page.PAGE),
                  demo_page.page(labels, (h, w)))
    with open(os.path.join(out, MODEL_JSON), "w", encoding="utf-8") as f:
      json.dump(content, f, separators=(",", ":"))
    written += [LABELS, SAVED_MODEL_METADATA, demo_page.PAGE, MODEL_JSON]
  return written


def read_graph_def(folder: str) -> tf1.GraphDef:
  """The GraphDef a tfjs folder holds, constants' values put back from the
  shards (float16 and uint8 weights dequantized as tfjs does): for checking
  an export in TensorFlow."""
  with open(os.path.join(folder, MODEL_JSON), encoding="utf-8") as f:
    content = json.load(f)
  return graph_def_of(content, lambda name: _read(os.path.join(folder, name)))


def graph_def_of(content: Dict[str, object],
                 read_shard: Callable[[str], bytes]) -> tf1.GraphDef:
  """The GraphDef of model.json's `content`, its weights read with
  `read_shard(file name)` and dequantized as tfjs does."""
  graph_def = json_format.ParseDict(content["modelTopology"], tf1.GraphDef())
  by_name = {n.name: n for n in graph_def.node}
  for group in content["weightsManifest"]:
    data = b"".join(read_shard(p) for p in group["paths"])
    offset = 0
    for spec in group["weights"]:
      count = int(np.prod(spec["shape"], dtype=np.int64))
      q = spec.get("quantization")
      if q and q["dtype"] == "float16":
        value = np.frombuffer(data, "<f2", count, offset).astype(np.float32)
        offset += 2 * count
      elif q and q["dtype"] == "uint8":
        value = (np.frombuffer(data, np.uint8, count, offset).astype(
            np.float32) * np.float32(q["scale"]) + np.float32(q["min"]))
        offset += count
      else:
        dtype = {"float32": "<f4", "int32": "<i4", "bool": np.bool_}[
            spec["dtype"]]
        value = np.frombuffer(data, dtype, count, offset)
        offset += value.itemsize * count
      node = by_name[spec["name"]]
      node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(
          value.reshape(spec["shape"]),
          dtype={"float32": tf.float32, "int32": tf.int32,
                 "bool": tf.bool}[spec["dtype"]]))
  return graph_def


def _read(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()
