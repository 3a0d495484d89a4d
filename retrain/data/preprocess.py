"""Image decoding and resizing, as TensorFlow ops.

The same ops run when bottlenecks are computed and inside every exported
graph, so a deployed model sees exactly the pixels training saw.
"""

from typing import Dict, NamedTuple, Tuple

import tensorflow as tf

from retrain.config import Distortions
from retrain.data import imageinfo

RESIZE_METHOD = "bilinear"


class Preprocessing(NamedTuple):
  """How an encoded image becomes the model's input; part of the cache key.

  jpeg_dct_keep: a JPEG is decoded by libjpeg at the smallest DCT scale (1/2,
    1/4 or 1/8) that still keeps at least this multiple of the input size in
    both dimensions; 0 decodes every JPEG at full size.
  antialias_over: the bilinear resize is antialiased when it shrinks the
    image by more than this factor in height or width. Below that, plain
    bilinear interpolation (every source pixel already contributes to the
    output) gives nearly the same pixels at about twice the speed.
  """
  jpeg_dct_keep: int = 1
  antialias_over: float = 2.0

  def version(self) -> str:
    """A string that changes whenever the pixels would."""
    return (f"decode_image/rgb/{RESIZE_METHOD}/jpeg_dct_keep="
            f"{self.jpeg_dct_keep}/antialias_over={self.antialias_over:g}/v3")

  def describe(self) -> Dict[str, object]:
    """JSON-friendly description, for exported metadata."""
    return {
        "method": RESIZE_METHOD,
        "jpeg_dct_keep": self.jpeg_dct_keep,
        "antialias_over": self.antialias_over,
        "rule": (
            (f"a JPEG is decoded at the smallest libjpeg DCT scale (1/2, 1/4,"
             f" 1/8) keeping at least {self.jpeg_dct_keep}x the input size; "
             if self.jpeg_dct_keep else "JPEGs are decoded at full size; ") +
            f"then a bilinear resize (with half-pixel centers) to the input "
            f"size, antialiased when it shrinks by more than "
            f"{self.antialias_over:g}x"),
    }


# --preprocessing choices. "fast" is the default; "exact" decodes at full
# size and always antialiases (the reference the fast one is measured
# against in benchmarks/preprocessing.py).
PREPROCESSINGS = {
    "fast": Preprocessing(),
    "exact": Preprocessing(jpeg_dct_keep=0, antialias_over=1.0),
}


def decode_image(contents: tf.Tensor, size: Tuple[int, int],
                 rule: Preprocessing = Preprocessing()) -> tf.Tensor:
  """Encoded image bytes (scalar string) -> uint8 [h, w, 3] RGB.

  JPEG, PNG, GIF, BMP and WebP; the format is detected from the bytes, not
  the file name. Grayscale, palette, 16-bit, CMYK and alpha images become
  8-bit RGB; an animated GIF gives its first frame. A JPEG larger than
  `size` (the model's input) is decoded at 1/2, 1/4 or 1/8 scale by libjpeg,
  by imageinfo.jpeg_scale_ratio's rule, which saves time and memory.
  """
  def full():
    return tf.io.decode_image(contents, channels=3, expand_animations=False)

  if not rule.jpeg_dct_keep:
    image = full()
    image.set_shape([None, None, 3])
    return image
  keep = rule.jpeg_dct_keep

  def jpeg():
    shape = tf.image.extract_jpeg_shape(contents)
    h, w = shape[0], shape[1]
    branches = [
        (tf.logical_and(h // r >= keep * size[0], w // r >= keep * size[1]),
         lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r))
        for r in imageinfo.JPEG_RATIOS]
    return tf.case(branches, default=full, exclusive=False)

  image = tf.cond(tf.io.is_jpeg(contents), jpeg, full)
  image.set_shape([None, None, 3])
  return image


def resize_image(image: tf.Tensor, size,
                 rule: Preprocessing = Preprocessing()) -> tf.Tensor:
  """uint8 or float [h, w, 3] -> float32 [H, W, 3] in [0, 255].

  `size` is (H, W), as ints or int32 scalar tensors. Antialiased only when
  shrinking by more than rule.antialias_over.
  """
  image = tf.cast(image, tf.float32)
  shape = tf.shape(image)
  shrink = tf.maximum(
      tf.cast(shape[-3], tf.float32) / tf.cast(size[0], tf.float32),
      tf.cast(shape[-2], tf.float32) / tf.cast(size[1], tf.float32))
  image = tf.cond(
      shrink > rule.antialias_over,
      lambda: tf.image.resize(image, size, RESIZE_METHOD, antialias=True),
      lambda: tf.image.resize(image, size, RESIZE_METHOD, antialias=False))
  return tf.clip_by_value(image, 0.0, 255.0)


def decode_and_resize(contents: tf.Tensor, size: Tuple[int, int],
                      rule: Preprocessing = Preprocessing()) -> tf.Tensor:
  """Encoded image bytes (scalar string) -> float32 [H, W, 3] in [0, 255]."""
  image = resize_image(decode_image(contents, size, rule), size, rule)
  image.set_shape([size[0], size[1], 3])
  return image


def decode_batch(contents: tf.Tensor, size: Tuple[int, int],
                 rule: Preprocessing = Preprocessing()) -> tf.Tensor:
  """Encoded images (string [n]) -> float32 [n, H, W, 3] in [0, 255]."""
  # Plain graph code: autograph would only spend time (~0.6 s) rewriting it.
  fn = tf.autograph.experimental.do_not_convert(
      lambda c: decode_and_resize(c, size, rule))
  return tf.map_fn(fn, contents,
                   fn_output_signature=tf.TensorSpec([size[0], size[1], 3],
                                                     tf.float32))


def distort_and_resize(image: tf.Tensor, size: Tuple[int, int],
                       d: Distortions, seed: tf.Tensor,
                       rule: Preprocessing = Preprocessing()) -> tf.Tensor:
  """uint8 [h, w, 3] -> float32 [H, W, 3] in [0, 255], randomly distorted.

  Deterministic for a given `seed` (int64 [2]): stateless random ops, so a
  cached augmented copy can be recomputed exactly.
  """
  seeds = tf.random.experimental.stateless_split(seed, 4)
  image = tf.cast(image, tf.float32)
  h, w = size
  if d.random_crop or d.random_scale:
    scale = (1.0 + d.random_crop / 100.0) * tf.random.stateless_uniform(
        [], seeds[0], 1.0, 1.0 + d.random_scale / 100.0)
    enlarged = [tf.cast(tf.math.ceil(scale * h), tf.int32),
                tf.cast(tf.math.ceil(scale * w), tf.int32)]
    image = resize_image(image, enlarged, rule)
    image = tf.image.stateless_random_crop(image, [h, w, 3], seed=seeds[1])
  else:
    image = resize_image(image, size, rule)
  if d.flip_left_right:
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[2])
  if d.random_brightness:
    image = image * tf.random.stateless_uniform(
        [], seeds[3], 1.0 - d.random_brightness / 100.0,
        1.0 + d.random_brightness / 100.0)
  image = tf.clip_by_value(image, 0.0, 255.0)
  image.set_shape([h, w, 3])
  return image
