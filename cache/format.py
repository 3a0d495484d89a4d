"""The binary sidecar format of one bottleneck.

Little-endian, a 48-byte header then the vector as float32:

  offset size  field
  0      4     magic b"RTBN"
  4      2     format version (1)
  6      2     reserved (0)
  8      4     vector length D
  12     16    model digest: first 16 bytes of SHA-1 of the model tag
  28     8     source image size in bytes
  36     8     source image modification time, nanoseconds
  44     4     CRC-32 of the payload
  48     4*D   the bottleneck, float32

A file whose magic, version, model digest or source fingerprint does not match,
or whose length or CRC is wrong, is not used (the bottleneck is recomputed).
"""

import hashlib
import struct
import zlib
from typing import Tuple

import numpy as np

MAGIC = b"RTBN"
VERSION = 1
_HEADER = struct.Struct("<4sHHI16sQqI")
HEADER_SIZE = _HEADER.size


class CacheFormatError(ValueError):
  """A sidecar file that is not a valid bottleneck for this model and image."""


def model_digest(model_tag: str) -> bytes:
  return hashlib.sha1(model_tag.encode("utf-8")).digest()[:16]


def encode(vector: np.ndarray, model_tag: str,
           fingerprint: Tuple[int, int]) -> bytes:
  """The file contents for `vector` ([D] floats) of an image.

  Args:
    vector: the bottleneck, shape [D].
    model_tag: the model identity (see cache.naming.model_tag).
    fingerprint: (size in bytes, mtime in ns) of the source image.
  """
  payload = np.ascontiguousarray(vector, dtype="<f4").reshape(-1).tobytes()
  header = _HEADER.pack(MAGIC, VERSION, 0, len(payload) // 4,
                        model_digest(model_tag), fingerprint[0],
                        fingerprint[1], zlib.crc32(payload))
  return header + payload


def decode(data: bytes, model_tag: str,
           fingerprint: Tuple[int, int]) -> np.ndarray:
  """The bottleneck ([D] float32) stored in `data`.

  Raises:
    CacheFormatError: not a complete, valid file for this model and image.
  """
  if len(data) < HEADER_SIZE:
    raise CacheFormatError("truncated header")
  magic, version, _, length, digest, size, mtime, crc = _HEADER.unpack_from(
      data)
  if magic != MAGIC:
    raise CacheFormatError("not a bottleneck file")
  if version != VERSION:
    raise CacheFormatError(f"format version {version}, expected {VERSION}")
  if digest != model_digest(model_tag):
    raise CacheFormatError("written for another model")
  if (size, mtime) != tuple(fingerprint):
    raise CacheFormatError("the source image has changed")
  payload = data[HEADER_SIZE:]
  if len(payload) != 4 * length:
    raise CacheFormatError("truncated data")
  if zlib.crc32(payload) != crc:
    raise CacheFormatError("checksum mismatch")
  return np.frombuffer(payload, dtype="<f4").astype(np.float32)


def verify(data: bytes) -> int:
  """Checks a file is complete and intact (any model); returns its length D.

  Raises:
    CacheFormatError: not a complete, intact bottleneck file.
  """
  if len(data) < HEADER_SIZE:
    raise CacheFormatError("truncated header")
  magic, version, _, length, _, _, _, crc = _HEADER.unpack_from(data)
  if magic != MAGIC or version != VERSION:
    raise CacheFormatError("not a bottleneck file of this version")
  payload = data[HEADER_SIZE:]
  if len(payload) != 4 * length or zlib.crc32(payload) != crc:
    raise CacheFormatError("truncated or corrupt data")
  return length


def read_vector(path: str) -> np.ndarray:
  """Reads a sidecar file's vector without checking model or image (for tools)."""
  with open(path, "rb") as f:
    data = f.read()
  _, _, _, length, _, _, _, _ = _HEADER.unpack_from(data)
  return np.frombuffer(data, dtype="<f4", count=length,
                       offset=HEADER_SIZE).astype(np.float32)
