"""The on-disk bottleneck cache.

One sidecar file per image and model, under a folder that mirrors the class
folders; the model's identity is part of the file name, so two models never
share files. A packed index per model (cache/index.py) lets a warm run read
one file instead of every sidecar. Files are written atomically. No
TensorFlow here: the cache can be read with numpy alone.
"""

from cache.atomic import atomic_write_bytes, atomic_write_text
from cache.index import IndexWriter, PackedIndex, index_path
from cache.format import CacheFormatError, decode, encode, read_vector, verify
from cache.naming import bottleneck_path, model_tag
from cache.store import BottleneckCache, FillResult, ImageRef, SourceFingerprint

__all__ = [
    "atomic_write_bytes", "atomic_write_text", "CacheFormatError", "decode",
    "encode", "read_vector", "verify", "bottleneck_path", "model_tag", "BottleneckCache",
    "FillResult", "ImageRef", "SourceFingerprint", "IndexWriter",
    "PackedIndex", "index_path",
]
