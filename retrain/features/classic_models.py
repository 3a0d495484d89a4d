"""The classic tool's `--architecture` models, found in (or downloaded into)
`--model_dir` as the classic `retrain.py` and the "TensorFlow for Poets"
codelab kept them.

`inception_v3` is `inception-2015-12-05.tgz` (`classify_image_graph_def.pb`);
`mobilenet_<1.0|0.75|0.50|0.25>_<224|192|160|128>[_quantized]` is
`mobilenet_v1_<version>_<size>_frozen.tgz` (`mobilenet_v1_<version>_<size>/`
`frozen_graph.pb`, or `quantized_graph.pb`). A model already extracted in
`--model_dir` is used as it is; else its archive there is extracted; else the
archive is downloaded from the classic address (RETRAIN_CLASSIC_MODELS_URL
replaces it: a mirror, or a test's server), checked (its full length, gzip's
CRC, a tar holding the model file) and only then put in place. Every file
appears whole or not at all: downloads and extractions go to temporary names
in `--model_dir` first and are renamed when complete.

`resolve` turns ModelOptions naming an architecture into ModelOptions naming
its frozen graph, with the classic input tensor, size and scaling. The
bottleneck is retrain's own choice (MobileNet's 1024/768/512/256-d pooled
features, not the classic tool's 1001 ImageNet logits) unless
--bottleneck_tensor says otherwise.
"""

import http.client
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from typing import Callable, NamedTuple

from absl import logging

from retrain.config import ModelOptions
from retrain.errors import UserError
from retrain.reports.progress import Progress

# Where the classic tool downloaded its models from (it used http://).
CLASSIC_URL = "https://download.tensorflow.org/models/"
URL_ENVIRONMENT = "RETRAIN_CLASSIC_MODELS_URL"

DEFAULT_ARCHITECTURE = "inception_v3"
MOBILENET_VERSIONS = ("1.0", "0.75", "0.50", "0.25")
MOBILENET_SIZES = (224, 192, 160, 128)
VALID_NAMES = ("inception_v3, or mobilenet_<1.0|0.75|0.50|0.25>_"
               "<224|192|160|128> with an optional _quantized, e.g. "
               "mobilenet_0.50_224")

# Seconds without a byte from the server before a download gives up.
DOWNLOAD_TIMEOUT = 60
_CHUNK = 1 << 16


class ClassicModel(NamedTuple):
  """One --architecture: its archive, the graph file in it, and how to
  feed it."""
  name: str
  archive: str  # Relative to the download base URL; its basename in model_dir.
  graph_file: str  # Relative to model_dir once extracted.
  input_tensor: str
  bottleneck_tensor: str  # retrain's choice (see the module docstring).
  classic_bottleneck: str  # What the classic tool used.
  input_size: int
  input_mean: float
  input_std: float

  @property
  def archive_name(self) -> str:
    return os.path.basename(self.archive)


def parse(architecture: str) -> ClassicModel:
  """The model an --architecture name means (case does not matter, as in the
  classic tool).

  Raises:
    UserError: an unknown name; the message lists the valid ones.
  """
  name = architecture.strip().lower()
  if name == "inception_v3":
    return ClassicModel(
        name, "image/imagenet/inception-2015-12-05.tgz",
        "classify_image_graph_def.pb", "Mul:0", "pool_3/_reshape:0",
        "pool_3/_reshape:0", 299, 128.0, 128.0)
  match = re.fullmatch(r"mobilenet_([0-9.]+)_(\d+)(_quantized)?", name)
  if (not match or match.group(1) not in MOBILENET_VERSIONS or
      int(match.group(2)) not in MOBILENET_SIZES):
    raise UserError(f"--architecture={architecture}: unknown; valid: "
                    f"{VALID_NAMES}")
  version, size = match.group(1), int(match.group(2))
  folder = f"mobilenet_v1_{version}_{size}"
  graph = "quantized_graph.pb" if match.group(3) else "frozen_graph.pb"
  return ClassicModel(
      name, f"{folder}_frozen.tgz", f"{folder}/{graph}", "input:0",
      "MobilenetV1/Logits/AvgPool_1a/AvgPool:0",
      "MobilenetV1/Predictions/Reshape:0", size, 127.5, 127.5)


def resolve(options: ModelOptions,
            urlopen: Callable = urllib.request.urlopen) -> ModelOptions:
  """`options` with its --architecture replaced by the model's graph file
  in --model_dir (extracted or downloaded there first if needed) and the
  classic tensors, size and scaling (flags the user gave win)."""
  model = parse(options.architecture)
  path = locate(model, options.model_dir, urlopen)
  logging.info("--architecture=%s: %s (bottleneck %s; the classic tool used "
               "%s)", model.name, path,
               options.bottleneck_tensor or model.bottleneck_tensor,
               model.classic_bottleneck)
  return options._replace(
      graph=path, tfhub_module="", architecture="",
      input_tensor=options.input_tensor or model.input_tensor,
      bottleneck_tensor=options.bottleneck_tensor or model.bottleneck_tensor,
      input_size=options.input_size or (model.input_size, model.input_size),
      input_mean=(model.input_mean if options.input_mean is None
                  else options.input_mean),
      input_std=(model.input_std if options.input_std is None
                 else options.input_std))


def locate(model: ClassicModel, model_dir: str,
           urlopen: Callable = urllib.request.urlopen) -> str:
  """The path of the model's graph file in `model_dir`: there already,
  extracted from its archive there, or downloaded and extracted."""
  graph = os.path.join(model_dir, *model.graph_file.split("/"))
  if os.path.isfile(graph):
    return graph
  archive = os.path.join(model_dir, model.archive_name)
  if not os.path.isfile(archive):
    _download(model, model_dir, archive, urlopen)
  _extract(model, archive, model_dir)
  return graph


def download_url(model: ClassicModel) -> str:
  base = os.environ.get(URL_ENVIRONMENT) or CLASSIC_URL
  return base.rstrip("/") + "/" + model.archive


def _offline_error(model: ClassicModel, model_dir: str, url: str,
                   reason: str) -> UserError:
  return UserError(
      f"--architecture={model.name}: {model.archive_name} is not in "
      f"--model_dir={model_dir} and downloading {url} failed ({reason}); "
      f"download it where there is internet and put it in {model_dir}")


def _download(model: ClassicModel, model_dir: str, archive: str,
              urlopen: Callable) -> None:
  """Downloads the archive to a temporary name in model_dir, checks it and
  renames it into place; nothing is left behind on failure."""
  url = download_url(model)
  try:
    os.makedirs(model_dir, exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=f".{model.archive_name}.",
                                suffix=".part", dir=model_dir)
  except OSError as e:
    raise UserError(f"--model_dir={model_dir}: cannot write there "
                    f"({e.strerror or e})") from None
  try:
    with os.fdopen(fd, "wb") as out:
      _fetch(url, out, model.archive_name, urlopen)
    _check_archive(part, model)
    os.replace(part, archive)
  except urllib.error.HTTPError as e:
    raise _offline_error(model, model_dir, url,
                         f"HTTP {e.code} {e.reason}") from None
  except (urllib.error.URLError, http.client.HTTPException, OSError,
          ValueError) as e:
    reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
    raise _offline_error(model, model_dir, url, str(reason)) from None
  finally:
    if os.path.exists(part):
      os.remove(part)
  logging.info("Downloaded %s (%d bytes) into %s", url,
               os.path.getsize(archive), model_dir)


def _fetch(url: str, out, what: str, urlopen: Callable) -> None:
  """Copies the body of `url` to the file `out`, with a progress bar;
  raises ValueError when the server sends less than it announced."""
  with urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
    total = int(response.headers.get("Content-Length") or 0)
    progress = Progress(f"Downloading {what}", total or 1)
    done = 0
    try:
      while True:
        chunk = response.read(_CHUNK)
        if not chunk:
          break
        out.write(chunk)
        done += len(chunk)
        if total:
          progress.update(min(done, total))
    finally:
      progress.close()
  if total and done != total:
    raise ValueError(f"got {done} of {total} bytes")
  if not done:
    raise ValueError("the server sent nothing")


def _check_archive(path: str, model: ClassicModel) -> None:
  """Reads the whole archive (gzip checks its CRC at the end) and checks
  that it holds the model's graph file; raises ValueError if not."""
  try:
    with tarfile.open(path, "r:gz") as tar:
      names = set()
      for member in tar:
        names.add(member.name.lstrip("./"))
        if member.isfile():
          source = tar.extractfile(member)
          while source.read(_CHUNK):
            pass
  except (tarfile.TarError, EOFError, OSError) as e:
    raise ValueError(f"not a complete .tgz archive: {e}") from None
  if model.graph_file not in names:
    raise ValueError(f"the archive has no {model.graph_file}")


def _safe_members(tar: tarfile.TarFile, archive: str):
  """The archive's plain files and folders; anything that would land outside
  the destination (absolute paths, '..', links, devices) is an error."""
  members = []
  for member in tar.getmembers():
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts or not (
        member.isfile() or member.isdir()):
      raise UserError(f"{archive}: refusing to extract {name!r} (outside the "
                      "folder, or not a plain file); the archive is not the "
                      "classic model archive")
    members.append(member)
  return members


def _extract(model: ClassicModel, archive: str, model_dir: str) -> None:
  """Extracts the archive into a temporary folder in model_dir, then moves
  each file into place with a rename (files already there are kept)."""
  scratch = tempfile.mkdtemp(prefix=".extract-", dir=model_dir)
  try:
    try:
      with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(scratch, members=_safe_members(tar, archive))
    except (tarfile.TarError, EOFError, OSError) as e:
      raise UserError(
          f"--model_dir={model_dir}: {model.archive_name} is damaged ({e}); "
          f"delete it and run again to download it") from None
    if not os.path.isfile(os.path.join(scratch, *model.graph_file.split("/"))):
      raise UserError(f"--model_dir={model_dir}: {model.archive_name} has no "
                      f"{model.graph_file}; it is not the classic "
                      f"{model.name} archive")
    for root, _, files in os.walk(scratch):
      rel = os.path.relpath(root, scratch)
      dest_dir = model_dir if rel == "." else os.path.join(model_dir, rel)
      os.makedirs(dest_dir, exist_ok=True)
      for name in files:
        dest = os.path.join(dest_dir, name)
        if not os.path.exists(dest):
          os.replace(os.path.join(root, name), dest)
  except OSError as e:
    raise UserError(f"--model_dir={model_dir}: cannot extract "
                    f"{model.archive_name} there ({e.strerror or e})") from None
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  logging.info("Extracted %s into %s", model.archive_name, model_dir)

