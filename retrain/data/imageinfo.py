"""Image format and size from the first bytes of a file (pure Python).

Used to refuse images too large to decode safely before any pixel is
decoded. The format is read from the bytes, never from the file name.
"""

import struct
from typing import NamedTuple, Optional

# Largest decoded image accepted, in pixels (about 600 MB as uint8 RGB). A
# JPEG counts at the reduced size it is decoded at (see jpeg_scale_ratio).
MAX_DECODED_PIXELS = 200_000_000

# DCT scaling ratios libjpeg offers, largest first.
JPEG_RATIOS = (8, 4, 2)


class ImageInfo(NamedTuple):
  format: str  # "jpeg", "png", "gif", "bmp" or "webp".
  width: int
  height: int


def jpeg_scale_ratio(height: int, width: int, target_height: int,
                     target_width: int, keep: int = 1) -> int:
  """The DCT scaling a JPEG is decoded at: the largest 1/r still >= keep x target.

  Decoding a large JPEG at 1/2, 1/4 or 1/8 size is much faster and smaller
  than a full decode; libjpeg scales in the DCT domain, which filters like
  an area average, so keeping the model's input size loses little.
  keep=0 means no scaling. preprocess.decode_image computes the same rule
  with TensorFlow ops.
  """
  if keep <= 0:
    return 1
  for r in JPEG_RATIOS:
    if (height // r >= keep * target_height and
        width // r >= keep * target_width):
      return r
  return 1


def sniff(data: bytes) -> Optional[ImageInfo]:
  """Format and size of an encoded image, or None if not recognised."""
  try:
    if data[:3] == b"\xff\xd8\xff":
      return _jpeg(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
      w, h = struct.unpack(">II", data[16:24])
      return ImageInfo("png", w, h)
    if data[:6] in (b"GIF87a", b"GIF89a"):
      w, h = struct.unpack("<HH", data[6:10])
      return ImageInfo("gif", w, h)
    if data[:2] == b"BM" and len(data) >= 26:
      header_size = struct.unpack("<I", data[14:18])[0]
      if header_size == 12:
        w, h = struct.unpack("<HH", data[18:22])
      else:
        w, h = struct.unpack("<ii", data[18:26])
      return ImageInfo("bmp", abs(w), abs(h))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
      return _webp(data)
  except struct.error:
    return None
  return None


def _jpeg(data: bytes) -> Optional[ImageInfo]:
  i = 2
  while i + 9 < len(data):
    if data[i] != 0xFF:
      return None
    marker = data[i + 1]
    if marker == 0xFF:  # Fill byte.
      i += 1
      continue
    if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
      i += 2
      continue
    length = struct.unpack(">H", data[i + 2:i + 4])[0]
    if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
      h, w = struct.unpack(">HH", data[i + 5:i + 9])
      return ImageInfo("jpeg", w, h)
    i += 2 + length
  return None


def _webp(data: bytes) -> Optional[ImageInfo]:
  chunk = data[12:16]
  if chunk == b"VP8X":
    w = int.from_bytes(data[24:27], "little") + 1
    h = int.from_bytes(data[27:30], "little") + 1
    return ImageInfo("webp", w, h)
  if chunk == b"VP8L":
    bits = int.from_bytes(data[21:25], "little")
    return ImageInfo("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
  if chunk == b"VP8 ":
    w, h = struct.unpack("<HH", data[26:30])
    return ImageInfo("webp", w & 0x3FFF, h & 0x3FFF)
  return None


def decoded_pixels(info: ImageInfo, target_height: int,
                   target_width: int, jpeg_dct_keep: int = 1) -> int:
  """How many pixels decoding `info` for a model of the target size makes."""
  if info.format == "jpeg":
    r = jpeg_scale_ratio(info.height, info.width, target_height,
                         target_width, jpeg_dct_keep)
    return -(-info.height // r) * -(-info.width // r)
  return info.height * info.width


def check_decodable(data: bytes, target_height: int, target_width: int,
                    jpeg_dct_keep: int = 1) -> Optional[str]:
  """None if `data` may be decoded, else why not (one line)."""
  if not data:
    return "empty file"
  info = sniff(data)
  if info is None:
    return None  # Let the decoder judge (and name) unknown formats.
  if info.width <= 0 or info.height <= 0:
    return f"invalid {info.format.upper()} size {info.width}x{info.height}"
  pixels = decoded_pixels(info, target_height, target_width, jpeg_dct_keep)
  if pixels > MAX_DECODED_PIXELS:
    return (f"too large to decode safely: {info.format.upper()} "
            f"{info.width}x{info.height} ({pixels / 1e6:.0f} megapixels "
            f"decoded; the limit is {MAX_DECODED_PIXELS / 1e6:.0f})")
  return None
