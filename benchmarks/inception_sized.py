"""An Inception-v3-sized frozen graph with the classic tensor names, offline.

  python benchmarks/inception_sized.py [--output=PATH.pb]

The real classify_image_graph_def.pb (91 MB) cannot be downloaded here, so
this builds one with the same compute and names: Keras InceptionV3 (random
weights, weights=None: nothing is downloaded; about 5.7 GFLOPs per image)
behind DecodeJpeg/contents -> DecodeJpeg -> Cast -> ExpandDims ->
ResizeBilinear -> Sub (x - 128) -> Mul (/ 128, [1, 299, 299, 3]), then a mean
pool pool_3 [1, 1, 1, 2048] and pool_3/_reshape [1, 2048], frozen to
constants. Accuracy on it is meaningless; its timing is real.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,unused-import

DEFAULT_PATH = os.path.join("/tmp", "retrain_benchmarks",
                            "inception_v3_sized", "classify_image_graph_def.pb")


def build(path: str = DEFAULT_PATH) -> str:
  """Writes the graph to `path` (unless it is there already); returns it."""
  if os.path.isfile(path):
    return path
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top
  tf1 = tf.compat.v1
  tf.keras.utils.set_random_seed(0)
  cnn = tf.keras.applications.InceptionV3(weights=None, include_top=False,
                                          input_shape=(299, 299, 3))
  fn = tf.function(lambda x: cnn(x, training=False)).get_concrete_function(
      tf.TensorSpec([None, 299, 299, 3], tf.float32))
  frozen = convert_to_constants.convert_variables_to_constants_v2(fn)
  body = frozen.graph.as_graph_def()
  body_input = frozen.inputs[0].name
  body_output = frozen.outputs[0].name
  graph = tf.Graph()
  with graph.as_default():
    contents = tf1.placeholder(tf.string, [], name="DecodeJpeg/contents")
    decoded = tf.io.decode_jpeg(contents, channels=3, name="DecodeJpeg")
    image = tf.expand_dims(tf.cast(decoded, tf.float32), 0,
                           name="ExpandDims")
    resized = tf1.image.resize_bilinear(image, [299, 299],
                                        name="ResizeBilinear")
    sub = tf.subtract(resized, 128.0, name="Sub")
    mul = tf.multiply(sub, np.float32(1 / 128), name="Mul")
    mul.set_shape([1, 299, 299, 3])
    features, = tf1.import_graph_def(body, input_map={body_input: mul},
                                     return_elements=[body_output],
                                     name="inception")
    pool = tf.reduce_mean(features, [1, 2], keepdims=True, name="pool_3")
    tf.reshape(pool, [1, 2048], name="pool_3/_reshape")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "wb") as f:
    f.write(graph.as_graph_def().SerializeToString())
  os.replace(path + ".tmp", path)
  return path


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  from retrain import tfimport  # pylint: disable=g-import-not-at-top
  tfimport.quiet_tensorflow()
  path = build(flags.FLAGS.output)
  print(f"{path}: {os.path.getsize(path) / 1e6:.0f} MB")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("output", DEFAULT_PATH, "Where to write the graph.")
  app.run(main)
