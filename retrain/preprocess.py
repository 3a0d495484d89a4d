"""Image decoding and resizing, as TensorFlow ops.

The same ops run when bottlenecks are computed and inside every exported
graph, so a deployed model sees exactly the pixels training saw.
"""

from typing import Tuple

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
