"""Every format a run exports, in one call: `export_all`.

The frozen graph (+ its JSON), the labels and the skipped list always; the
SavedModel, TFLite (float, dynamic or int8, with MediaPipe metadata),
TensorFlow.js and ONNX models when their flags ask. Each writer lives in
its own module (export.py, tfjs.py, onnx_model.py); this module decides
what each one gets: the metadata shared by all, calibration photos for
int8, test photos to check quantized TensorFlow.js weights on.
`intermediate_exporter` writes the graphs --intermediate_store_frequency
asks for during training.
"""

import concurrent.futures
import dataclasses
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from cache import fs
from retrain.config import RunConfig
from retrain.deploy import export, onnx_model, tfjs
from retrain.features.extract import ImageDecoder
from retrain.features.model import FeatureExtractor

tf1 = tf.compat.v1

# Training images used to calibrate int8 TFLite quantization.
TFLITE_CALIBRATION_IMAGES = 200
# Test photos a quantized TensorFlow.js export is checked on.
TFJS_CHECK_IMAGES = 50


@dataclasses.dataclass(frozen=True)
class Trained:
  """What every format is made from: the CNN and the new layer, and what
  the run measured of them."""
  fx: FeatureExtractor
  labels: Sequence[str]
  weights: np.ndarray  # float32 [D, classes]
  biases: np.ndarray  # float32 [classes]
  # The frozen graph with placeholders for the layer (export.py).
  template: "concurrent.futures.Future[tf1.GraphDef]"
  test_paths: Sequence[str]  # The test photos predicted ...
  test_probabilities: np.ndarray  # ... float32 [n, classes], by the session.
  training_paths: Sequence[str]  # Original training photos (calibration).
  skipped: Sequence[Tuple[str, str]]  # (path, reason) of unusable images.
  test_accuracy: Optional[float] = None
  # The unknown class (training/unknown.UnknownClass, last in `labels`),
  # computed inside every export; None: none.
  unknown: Optional[object] = None


def common_metadata(fx: FeatureExtractor,
                    labels: Sequence[str]) -> Dict[str, object]:
  """What every export's JSON says of the model."""
  return dict(classes=len(labels), model=fx.describe(),
              input_size=list(fx.input_size))


def graph_metadata(fx: FeatureExtractor, labels: Sequence[str],
                   config: RunConfig) -> Dict[str, object]:
  """The JSON description of a frozen graph export (results aside)."""
  return dict(common_metadata(fx, labels),
              **export.io_description(fx, config.final_tensor_name))


def export_all(trained: Trained, config: RunConfig,
               seed: int = 0) -> List[str]:
  """Writes every format the config asks for; returns the paths written."""
  fx, labels = trained.fx, trained.labels
  results = dict(test_accuracy=trained.test_accuracy,
                 test_images=len(trained.test_paths),
                 skipped_images=len(trained.skipped))
  if trained.unknown is not None:
    results["unknown"] = dict(trained.unknown.to_json(), label=labels[-1],
                              index=len(labels) - 1)
  metadata = dict(graph_metadata(fx, labels, config), **results)
  common = dict(common_metadata(fx, labels), **results,
                resize=metadata["resize"],
                input_scaling=metadata["input_scaling"])
  graph_def = export.fill_final_layer(trained.template.result(),
                                      trained.weights, trained.biases,
                                      trained.unknown)
  export.write_frozen_graph(config.output_graph, graph_def, metadata,
                            labels_path=config.output_labels)
  export.write_labels(config.output_labels, labels)
  skipped_path = os.path.splitext(config.output_graph)[0] + ".skipped.txt"
  fs.write_text(skipped_path, "".join(
      f"{p}\t{r}\n" for p, r in trained.skipped))
  outputs = [config.output_graph, export.metadata_path(config.output_graph),
             config.output_labels, skipped_path]
  if config.saved_model_dir:
    export.write_saved_model(config.saved_model_dir, graph_def, labels,
                             config.final_tensor_name, common)
    outputs.append(config.saved_model_dir)
  if config.tfjs_output:
    outputs.append(_export_tfjs(trained, config, common))
  if config.tflite_output:
    outputs += _export_tflite(trained, config, seed, common)
  if config.onnx_output:
    outputs.append(_export_onnx(trained, config, common))
  return outputs


def intermediate_exporter(config: RunConfig,
                          template: "concurrent.futures.Future[tf1.GraphDef]",
                          final_layer: Callable[[], Tuple[np.ndarray,
                                                          np.ndarray]],
                          metadata: Dict[str, object],
                          written: List[str],
                          unknown: Optional[object] = None
                          ) -> Callable[[int], None]:
  """store(step): the frozen graph with the layer as final_layer() gives
  it now, as intermediate_<step>.pb; its path appended to `written`.
  unknown: what fills a template's unknown class (UnknownClass.disabled:
  the class is fitted after training)."""
  def store(step: int) -> None:
    weights, biases = final_layer()
    graph_def = export.fill_final_layer(template.result(), weights, biases,
                                        unknown)
    path = os.path.join(config.intermediate_output_graphs_dir,
                        f"intermediate_{step}.pb")
    export.write_frozen_graph(path, graph_def, dict(metadata, step=step),
                              labels_path=config.output_labels)
    written.append(path)
    logging.info("Saved intermediate graph %s", path)
  return store


def decode(fx: FeatureExtractor, paths: Sequence[str]
           ) -> Tuple[np.ndarray, np.ndarray]:
  """(float32 [n, H, W, 3] images in 0..255 as training decoded them, the
  indices of `paths` that decoded)."""
  decoder = ImageDecoder(fx.input_size, rule=fx.preprocessing)
  try:
    decoded = [decoder.decode(p)[0] for p in paths]
  finally:
    decoder.close()
  kept = np.array([i for i, d in enumerate(decoded) if d is not None],
                  np.int64)
  images = np.stack([decoded[i] for i in kept]) if len(kept) else np.zeros(
      [0, *fx.input_size, 3], np.float32)
  return images, kept


def _export_tfjs(trained: Trained, config: RunConfig,
                 common: Dict[str, object]) -> str:
  """Writes the TensorFlow.js folder; quantized weights are checked against
  the float model on test photos (see tfjs.write_tfjs)."""
  check = None
  if config.tfjs_quantize != "none" and len(trained.test_paths):
    count = min(TFJS_CHECK_IMAGES, len(trained.test_paths))
    images, kept = decode(trained.fx, trained.test_paths[:count])
    check = (images, trained.test_probabilities[:count][kept])
  tfjs.write_tfjs(config.tfjs_output, trained.fx, trained.weights,
                  trained.biases, trained.labels, common,
                  config.tfjs_quantize, config.final_tensor_name, check,
                  trained.unknown)
  return config.tfjs_output


def _export_tflite(trained: Trained, config: RunConfig, seed: int,
                   common: Dict[str, object]) -> List[str]:
  """Writes the TFLite model (and its labels and JSON); returns the paths."""
  fx = trained.fx
  representative = None
  if config.tflite_quantize == "int8":
    paths = trained.training_paths
    rng = np.random.default_rng(seed + 2)
    pick = rng.permutation(len(paths))[:TFLITE_CALIBRATION_IMAGES]
    representative, _ = decode(fx, [paths[i] for i in pick])
    logging.info("Calibrating int8 TFLite on %d training images",
                 len(representative))
  flatbuffer = export.tflite_model(fx, trained.weights, trained.biases,
                                   config.tflite_quantize, representative,
                                   config.final_tensor_name,
                                   config.tflite_input, trained.unknown)
  export.write_tflite(config.tflite_output, flatbuffer, trained.labels, dict(
      common, **export.tflite_io_description(fx, config.tflite_quantize,
                                             config.final_tensor_name,
                                             config.tflite_input)))
  stem = os.path.splitext(config.tflite_output)[0]
  return [config.tflite_output, stem + ".labels.txt", stem + ".json"]


def _export_onnx(trained: Trained, config: RunConfig,
                 common: Dict[str, object]) -> str:
  """Writes the .onnx model: labels, input size and scaling inside."""
  model = onnx_model.onnx_model(
      trained.fx, trained.weights, trained.biases, trained.labels,
      onnx_model.description(trained.fx, common), config.final_tensor_name,
      trained.unknown)
  onnx_model.write_onnx(config.onnx_output, model)
  return config.onnx_output
