"""Small models and image folders that the tests build themselves.

- make_inception_like_graph: a frozen GraphDef with Inception-v3's tensor names
  (DecodeJpeg/contents, Mul [1,299,299,3], pool_3, pool_3/_reshape [1,2048]),
  batch fixed at 1 like the real one.
- make_feature_saved_model: a TF2 SavedModel image feature vector (float
  images in [0,1] -> [batch, D]), with or without a serving signature.
- make_tf1_saved_model: a TF1-style SavedModel with a 'default' signature.
- make_color_images: a class folder per colour, images of noisy colour fields,
  so a linear layer on colour-sensitive features separates them.
"""

import os
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1

COLORS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}


def _features(images: tf.Tensor, w: np.ndarray, pool: int) -> tf.Tensor:
  """[n,H,W,3] scaled images -> [n,h,w,D] relu(1x1 conv of average pooled)."""
  pooled = tf.nn.avg_pool2d(images, pool, pool, "VALID")
  return tf.nn.relu(tf.nn.conv2d(pooled, w[None, None], 1, "VALID"))


def make_inception_like_graph(path: str, depth: int = 2048) -> str:
  rng = np.random.default_rng(1)
  w = rng.normal(size=(3, depth)).astype(np.float32)
  g = tf.Graph()
  with g.as_default():
    contents = tf1.placeholder(tf.string, [], name="DecodeJpeg/contents")
    decoded = tf.io.decode_jpeg(contents, channels=3, name="DecodeJpeg")
    image = tf.expand_dims(tf.cast(decoded, tf.float32), 0, name="ExpandDims")
    resized = tf1.image.resize_bilinear(image, [299, 299],
                                        name="ResizeBilinear")
    sub = tf.subtract(resized, 128.0, name="Sub")
    mul = tf.multiply(sub, 1.0 / 128.0, name="Mul")
    mul.set_shape([1, 299, 299, 3])
    feats = _features(mul, w, 23)
    pool3 = tf.reduce_mean(feats, [1, 2], keepdims=True, name="pool_3")
    reshape = tf.reshape(pool3, [1, depth], name="pool_3/_reshape")
    tf.nn.softmax(tf.matmul(reshape, tf.ones([depth, 1008]) * 1e-3),
                  name="softmax")
  with open(path, "wb") as f:
    f.write(g.as_graph_def().SerializeToString())
  return path


class _FeatureModule(tf.Module):

  def __init__(self, depth: int, pool: int):
    super().__init__()
    rng = np.random.default_rng(2)
    self.w = tf.Variable(rng.normal(size=(3, depth)).astype(np.float32))
    self.pool = pool

  def features(self, images):
    scaled = images * 2.0 - 1.0
    pooled = tf.nn.avg_pool2d(scaled, self.pool, self.pool, "VALID")
    conv = tf.nn.relu(tf.nn.conv2d(pooled, self.w[None, None], 1, "VALID"))
    return tf.reduce_mean(conv, [1, 2])


def make_feature_saved_model(path: str, size=(64, 64), depth: int = 32,
                             signature: bool = True,
                             static_size: bool = True) -> str:
  """A TF2 SavedModel: images [batch, H, W, 3] in [0, 1] -> [batch, depth]."""
  module = _FeatureModule(depth, 8)
  shape = [None, size[0], size[1], 3] if static_size else [None, None, None,
                                                            3]
  spec = tf.TensorSpec(shape, tf.float32, name="images")
  module.__call__ = tf.function(module.features, input_signature=[spec])
  signatures = None
  if signature:
    serve = tf.function(lambda images: {"feature_vector":
                                        module.features(images)},
                        input_signature=[spec])
    signatures = {"serving_default": serve.get_concrete_function()}
  tf.saved_model.save(module, path, signatures=signatures)
  return path


def make_non_image_saved_model(path: str) -> str:
  """A SavedModel whose signature takes [batch, 10] vectors, not images."""
  module = tf.Module()
  module.v = tf.Variable(tf.ones([10, 4]))
  serve = tf.function(lambda x: {"out": tf.matmul(x, module.v)},
                      input_signature=[tf.TensorSpec([None, 10], tf.float32,
                                                     name="x")])
  tf.saved_model.save(module, path,
                      signatures={"serving_default":
                                  serve.get_concrete_function()})
  return path


def make_tf1_saved_model(path: str, size=(48, 48), depth: int = 16) -> str:
  """A TF1 SavedModel with a 'default' signature: images -> default."""
  rng = np.random.default_rng(3)
  g = tf.Graph()
  with g.as_default():
    images = tf1.placeholder(tf.float32, [None, size[0], size[1], 3],
                             name="images")
    w = tf1.get_variable("w", initializer=rng.normal(
        size=(3, depth)).astype(np.float32))
    feats = tf.reduce_mean(_features(images * 2.0 - 1.0, w, 6), [1, 2])
    with tf1.Session(graph=g) as sess:
      sess.run(tf1.global_variables_initializer())
      builder = tf1.saved_model.Builder(path)
      sig = tf1.saved_model.predict_signature_def({"images": images},
                                                  {"default": feats})
      builder.add_meta_graph_and_variables(sess, ["serve"],
                                           signature_def_map={"default": sig})
      builder.save()
  return path


def encode_image(pixels: np.ndarray, fmt: str = "jpeg") -> bytes:
  """uint8 [h, w, 3] -> encoded bytes."""
  if fmt == "png":
    return tf.io.encode_png(pixels).numpy()
  return tf.io.encode_jpeg(pixels, quality=90).numpy()


def make_color_images(root: str, per_class: int = 24,
                      colors: Dict[str, Sequence[int]] = None,
                      size=(40, 52), seed: int = 0,
                      formats=("jpeg",)) -> str:
  """root/<color>/img_XXX.jpg: noisy images around each class's colour."""
  rng = np.random.default_rng(seed)
  for name, rgb in (colors or COLORS).items():
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      noise = rng.normal(0, 25, size=(*size, 3))
      pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
      fmt = formats[i % len(formats)]
      ext = "png" if fmt == "png" else "jpg"
      with open(os.path.join(root, name, f"img_{i:03d}.{ext}"), "wb") as f:
        f.write(encode_image(pixels, fmt))
  return root
