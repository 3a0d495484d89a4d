"""The training preprocessing rule with Pillow and numpy, without TensorFlow.

For devices that run a TFLite export with LiteRT alone (`pip install
ai-edge-litert pillow`). It follows preprocess.py's rule: a JPEG is decoded
at the DCT scale imageinfo.jpeg_scale_ratio picks (Pillow's `draft`, the
same libjpeg scaling), converted to RGB (first frame of an animation), then
resized bilinearly with half-pixel centers, antialiased (a triangle filter
widened by the shrink factor) only when shrinking by more than
`antialias_over`. Pixels differ from TensorFlow's by JPEG decoder rounding
only (measured in tests/test_label_image.py).
"""

import io
from typing import Optional, Tuple

import numpy as np

from retrain.data import imageinfo


class PilDecoder:
  """Encoded image bytes -> float32 [H, W, 3] RGB in [0, 255]."""

  def __init__(self, size: Tuple[int, int], jpeg_dct_keep: int = 1,
               antialias_over: float = 2.0):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    self._image = Image
    self.size = (int(size[0]), int(size[1]))
    self.jpeg_dct_keep = int(jpeg_dct_keep)
    self.antialias_over = float(antialias_over)

  def decode_bytes(self, data: bytes
                   ) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """(image, None), or (None, why it cannot be used)."""
    h, w = self.size
    refusal = imageinfo.check_decodable(data, h, w, self.jpeg_dct_keep)
    if refusal:
      return None, refusal
    try:
      image = self._image.open(io.BytesIO(data))
      if image.format == "JPEG":
        ratio = imageinfo.jpeg_scale_ratio(image.height, image.width, h, w,
                                           self.jpeg_dct_keep)
        if ratio > 1:
          # Pillow picks the largest scale 1/s with size // s >= the
          # request, and libjpeg then rounds the scaled size up, as
          # TensorFlow's decode_jpeg(ratio=r) does.
          image.draft("RGB", (image.width // ratio, image.height // ratio))
      image.seek(0)
      pixels = np.asarray(image.convert("RGB"), np.float32)
    except (OSError, ValueError, EOFError, SyntaxError) as e:
      return None, f"cannot decode it ({e})"
    return resize(pixels, self.size, self.antialias_over), None


def resize(image: np.ndarray, size: Tuple[int, int],
           antialias_over: float = 2.0) -> np.ndarray:
  """float [h, w, 3] -> float32 [H, W, 3] in [0, 255], as preprocess.resize_image."""
  shrink = max(image.shape[0] / size[0], image.shape[1] / size[1])
  antialias = shrink > antialias_over
  out = _resize_axis(image, size[0], 0, antialias)
  out = _resize_axis(out, size[1], 1, antialias)
  return np.clip(out, 0.0, 255.0).astype(np.float32)


def _resize_axis(image: np.ndarray, out_size: int, axis: int,
                 antialias: bool) -> np.ndarray:
  """Bilinear resize along one axis, with half-pixel centers."""
  in_size = image.shape[axis]
  scale = in_size / out_size
  centers = (np.arange(out_size) + 0.5) * scale  # In input coordinates.
  if antialias and scale > 1:  # Triangle filter of radius `scale`.
    radius = scale
  else:  # Plain bilinear: the two nearest input pixels.
    radius = 1.0
  lo = np.floor(centers - radius).astype(np.int64)
  taps = int(np.ceil(2 * radius)) + 2
  index = lo[:, None] + np.arange(taps)[None, :]  # [out, taps].
  weights = np.maximum(0.0, 1.0 - np.abs(index + 0.5 - centers[:, None]) /
                       radius)
  if radius == 1.0:  # Samples beyond the edge repeat the edge pixel.
    index = np.clip(index, 0, in_size - 1)
  else:  # Antialiased: only real pixels, weights renormalised.
    weights = np.where((index >= 0) & (index < in_size), weights, 0.0)
    index = np.clip(index, 0, in_size - 1)
  weights = (weights / weights.sum(1, keepdims=True)).astype(np.float32)
  moved = np.moveaxis(np.asarray(image, np.float32), axis, 0)  # [in, ...].
  out = np.zeros((out_size,) + moved.shape[1:], np.float32)
  for t in range(taps):  # One tap at a time keeps memory at one output.
    out += weights[:, t, None, None] * moved[index[:, t]]
  return np.moveaxis(out, 0, axis)
