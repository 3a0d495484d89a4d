"""A messy photo folder, as real users have, built from real photos.

make_messy_folder(root, photos) copies real photos under odd names and adds
every kind of difficult file. It returns (good, bad): the relative paths that
must be used, and {relative path: reason substring} of those to be skipped.
"""

import io
import os
import shutil
import struct
import zlib
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
  buf = io.BytesIO()
  image.save(buf, fmt, **kw)
  return buf.getvalue()


def fake_png_header(width: int, height: int) -> bytes:
  """A tiny file whose PNG header claims a huge image (a decompression bomb)."""
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  chunk = b"IHDR" + ihdr
  return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk +
          struct.pack(">I", zlib.crc32(chunk)))


def make_messy_folder(root: str, photos: Sequence[str],
                      huge: bool = True) -> Tuple[List[str], Dict[str, str]]:
  """Builds root/{a,b,c,...}; see the module docstring."""
  good, bad = [], {}

  def write(rel: str, data: bytes) -> None:
    path = os.path.join(root, *rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(data)

  def put(rel: str, data: bytes, reason: str = None) -> None:
    write(rel, data)
    if reason is None:
      good.append(rel)
    else:
      bad[rel] = reason

  photos = list(photos)
  ims = [Image.open(p).convert("RGB") for p in photos[:12]]
  # Class "mixed formats": every decodable oddity.
  put("mixed/PNG named.jpg", _save(ims[0], "PNG"))
  put("mixed/webp named.JPG", _save(ims[1], "WEBP"))
  put("mixed/alpha.png", _save(ims[2].convert("RGBA"), "PNG"))
  put("mixed/palette.png", _save(ims[3].convert("P"), "PNG"))
  put("mixed/gray.jpeg", _save(ims[4].convert("L"), "JPEG"))
  put("mixed/cmyk.jpg", _save(ims[5].convert("CMYK"), "JPEG"))
  sixteen = (np.asarray(ims[6].convert("L"), np.uint16) * 257)
  put("mixed/sixteen_bit.png", _save(Image.fromarray(sixteen), "PNG"))
  frames = [ims[7].convert("P"), ims[8].convert("P")]
  put("mixed/animated.gif", _save(frames[0], "GIF", save_all=True,
                                  append_images=frames[1:]))
  put("mixed/bitmap.BMP", _save(ims[9], "BMP"))
  put("mixed/real.webp", _save(ims[9].rotate(90), "WEBP"))
  put("mixed/nested/deeper/inside.jpg", _save(ims[10], "JPEG"))
  # Class "names": real photos under awkward names, plus files to ignore.
  for i, name in enumerate(["with space.jpg", "ünïcödé 写真.jpg",
                            "multi.dots.name.jpeg", "UPPER.JPG"]):
    with open(photos[12 + i], "rb") as f:
      put(f"names/{name}", f.read())
  write("names/.hidden.jpg", b"never read")
  write("names/.git/objects.jpg", b"never read")
  write("names/notes.txt", b"not an image")
  # Class "broken": a few good photos and every kind of bad file.
  for i in range(3):
    with open(photos[16 + i], "rb") as f:
      put(f"broken/good_{i}.jpg", f.read())
  with open(photos[19], "rb") as f:
    data = f.read()
  put("broken/truncated.jpg", data[:len(data) // 3], "decode")
  put("broken/zero.jpg", b"", "empty file")
  put("broken/random.jpg", np.random.default_rng(0).bytes(5000), "decode")
  put("broken/text.png", b"hello, I am not a PNG" * 20, "decode")
  put("broken/bomb.png", fake_png_header(100000, 100000), "too large")
  if huge:
    big = ims[11].resize((12000, 12000), Image.BILINEAR)
    put("broken/huge_12000.jpg", _save(big, "JPEG", quality=70))
  # A tiny class and an empty one, and a stray top-level file.
  shutil.copy(photos[20], os.path.join(root, "mixed", "..", "tiny.jpg"))
  os.makedirs(os.path.join(root, "lonely"), exist_ok=True)
  with open(photos[20], "rb") as f:
    put("lonely/only_one.jpg", f.read())
  os.makedirs(os.path.join(root, "empty class"), exist_ok=True)
  with open(os.path.join(root, "empty class", "readme.txt"), "w") as f:
    f.write("no images here")
  return good, bad
