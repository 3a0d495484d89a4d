"""Image decoding and resizing, as TensorFlow ops.

The same ops run when bottlenecks are computed and inside every exported
graph, so a deployed model sees exactly the pixels training saw.
"""

from typing import Tuple

import tensorflow as tf

# Described in the exported JSON, so clients can reproduce it.
RESIZE_METHOD = "bilinear"
RESIZE_ANTIALIAS = True


def decode_image(contents: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG/PNG/GIF/BMP bytes (scalar string) -> uint8 [h, w, 3] RGB.

  The format is detected from the bytes, not the file name. Grayscale and
  alpha channels are converted to RGB; an animated GIF gives its first frame.
  """
  return tf.io.decode_image(contents, channels=3, expand_animations=False)


def resize_image(image: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """uint8 or float [h, w, 3] (or [n, h, w, 3]) -> float32 [H, W, 3] in [0, 255]."""
  image = tf.image.resize(tf.cast(image, tf.float32), size,
                          method=RESIZE_METHOD, antialias=RESIZE_ANTIALIAS)
  return tf.clip_by_value(image, 0.0, 255.0)


def decode_and_resize(contents: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """Encoded image bytes (scalar string) -> float32 [H, W, 3] in [0, 255]."""
  image = resize_image(decode_image(contents), size)
  image.set_shape([size[0], size[1], 3])
  return image


def decode_batch(contents: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """Encoded images (string [n]) -> float32 [n, H, W, 3] in [0, 255]."""
  return tf.map_fn(lambda c: decode_and_resize(c, size), contents,
                   fn_output_signature=tf.TensorSpec([size[0], size[1], 3],
                                                     tf.float32))
