"""Image decoding and resizing, as TensorFlow ops.

The same ops run when bottlenecks are computed and inside every exported
graph, so a deployed model sees exactly the pixels training saw.
"""

from typing import NamedTuple, Tuple

import tensorflow as tf

from retrain import imageinfo

# Described in the exported JSON, so clients can reproduce it.
RESIZE_METHOD = "bilinear"
RESIZE_ANTIALIAS = True


def decode_image(contents: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """Encoded image bytes (scalar string) -> uint8 [h, w, 3] RGB.

  JPEG, PNG, GIF, BMP and WebP; the format is detected from the bytes, not
  the file name. Grayscale, palette, 16-bit, CMYK and alpha images become
  8-bit RGB; an animated GIF gives its first frame. A JPEG much larger than
  `size` (the model's input) is decoded at 1/2, 1/4 or 1/8 scale by libjpeg,
  by imageinfo.jpeg_scale_ratio's rule, which saves time and memory.
  """
  def full():
    return tf.io.decode_image(contents, channels=3, expand_animations=False)

  def jpeg():
    shape = tf.image.extract_jpeg_shape(contents)
    h, w = shape[0], shape[1]
    branches = [
        (tf.logical_and(h // r >= 2 * size[0], w // r >= 2 * size[1]),
         lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r))
        for r in imageinfo.JPEG_RATIOS]
    return tf.case(branches, default=full, exclusive=False)

  image = tf.cond(tf.io.is_jpeg(contents), jpeg, full)
  image.set_shape([None, None, 3])
  return image


def resize_image(image: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """uint8 or float [h, w, 3] (or [n, h, w, 3]) -> float32 [H, W, 3] in [0, 255]."""
  image = tf.image.resize(tf.cast(image, tf.float32), size,
                          method=RESIZE_METHOD, antialias=RESIZE_ANTIALIAS)
  return tf.clip_by_value(image, 0.0, 255.0)


def decode_and_resize(contents: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """Encoded image bytes (scalar string) -> float32 [H, W, 3] in [0, 255]."""
  image = resize_image(decode_image(contents, size), size)
  image.set_shape([size[0], size[1], 3])
  return image


def decode_batch(contents: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """Encoded images (string [n]) -> float32 [n, H, W, 3] in [0, 255]."""
  return tf.map_fn(lambda c: decode_and_resize(c, size), contents,
                   fn_output_signature=tf.TensorSpec([size[0], size[1], 3],
                                                     tf.float32))


class Distortions(NamedTuple):
  """Random distortions of training images (the classic tool's flags).

  random_crop: margin in percent cropped away at random (the image is first
  enlarged by that margin); random_scale: extra random enlargement up to this
  percent; random_brightness: multiply pixels by a factor within +-percent;
  flip_left_right: mirror half of the time.
  """
  flip_left_right: bool = False
  random_crop: int = 0
  random_scale: int = 0
  random_brightness: int = 0

  def any(self) -> bool:
    return bool(self.flip_left_right or self.random_crop or
                self.random_scale or self.random_brightness)


def distort_and_resize(image: tf.Tensor, size: Tuple[int, int],
                       d: Distortions, seed: tf.Tensor) -> tf.Tensor:
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
    image = tf.image.resize(image, enlarged, method=RESIZE_METHOD,
                            antialias=RESIZE_ANTIALIAS)
    image = tf.image.stateless_random_crop(image, [h, w, 3], seed=seeds[1])
  else:
    image = tf.image.resize(image, size, method=RESIZE_METHOD,
                            antialias=RESIZE_ANTIALIAS)
  if d.flip_left_right:
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[2])
  if d.random_brightness:
    image = image * tf.random.stateless_uniform(
        [], seeds[3], 1.0 - d.random_brightness / 100.0,
        1.0 + d.random_brightness / 100.0)
  image = tf.clip_by_value(image, 0.0, 255.0)
  image.set_shape([h, w, 3])
  return image
