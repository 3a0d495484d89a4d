"""Bottlenecks of every image by set, from the cache or computed.

Each image's vector is read from the on-disk cache or computed once and
written to it; augmented copies of the training images are cached under their
own model tags. The sets refer to rows of the memory-mapped cache index until
`keep_in_memory` loads them.
"""

import hashlib
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from absl import logging

import cache
from retrain.config import RunConfig
from retrain.data import images
from retrain.features.extract import BottleneckExtractor
from retrain.features.model import FeatureExtractor
from retrain.features.sets import LabeledBottlenecks
from retrain.reports.progress import Progress

# Marks augmented copies in training set paths: "<image path>#augmented<k>".
AUGMENTED_MARK = "#augmented"


class _Work(NamedTuple):
  """What computes one cache tag's missing vectors."""
  fx: FeatureExtractor
  distortions: Optional[object] = None  # preprocess.Distortions
  copy: int = 0
  random_seed: int = 0
  # path -> photo statistics of the originals decoded (see
  # photo_statistics), or None.
  stats: Optional[Dict[str, np.ndarray]] = None


def _extractor(work: _Work, config: RunConfig) -> BottleneckExtractor:
  """The in-process extractor for one cache tag's missing vectors."""
  extractor = BottleneckExtractor(work.fx, config.bottleneck_batch_size,
                                  distortions=work.distortions,
                                  copy=work.copy,
                                  random_seed=work.random_seed)
  extractor.photo_stats = work.stats
  return extractor


def _fill(store: cache.BottleneckCache, refs: Sequence[cache.ImageRef],
          what: str, work: _Work, config: RunConfig) -> cache.FillResult:
  """store.fill with a progress report; the missing vectors computed by a
  lazily built in-process extractor, or with --beam_runner by a Beam
  pipeline that writes their sidecars itself."""
  extractors: List[BottleneckExtractor] = []
  progress: List[Progress] = []

  def compute(missing):
    if not missing:
      return iter(())
    progress.append(Progress(
        f"{what} ({len(refs) - len(missing)} cached, {len(missing)} new)",
        len(missing)))
    if config.beam_runner:
      return _beam_compute(store, missing, work, config)
    extractors.append(_extractor(work, config))
    return extractors[0].compute(missing)

  try:
    return store.fill(refs, compute, work.fx.bottleneck_size,
                      lambda done, total: progress[0].update(done),
                      compute_stores=bool(config.beam_runner))
  finally:
    for e in extractors:
      e.close()
    for p in progress:
      p.close()


def _beam_compute(store: cache.BottleneckCache,
                  missing: Sequence[cache.ImageRef], work: _Work,
                  config: RunConfig):
  """Runs the Beam pipeline over `missing`, then yields what it computed
  (or why an image cannot be used), as an extractor's compute would."""
  from retrain.features import beam_extract  # pylint: disable=g-import-not-at-top
  unanswered = []
  for index, vector, error in beam_extract.compute(
      missing, work.fx, store.tag, config.bottleneck_dir, config.beam_runner,
      config.beam_options, config.bottleneck_batch_size or
      beam_extract.DEFAULT_BATCH_SIZE, work.distortions, work.copy,
      work.random_seed, work.stats is not None):
    if vector is None and error is None:
      unanswered.append(index)
    else:
      yield index, vector, error
  yield from _recover(store, missing, unanswered, work, config)


def _recover(store: cache.BottleneckCache, refs: Sequence[cache.ImageRef],
             indices: Sequence[int], work: _Work, config: RunConfig):
  """Yields (index, vector, error) for the images a Beam pipeline gave no
  answer for (no shard's pack names them: a runner that lost or dropped
  work): the vector of a valid sidecar one of its attempts wrote, else
  computed here, as without Beam. Nothing is lost: a bad image is reported
  as in process; any other failure raises."""
  if not indices:
    return
  logging.warning("Beam: %d images came back without an answer (the runner "
                  "lost or dropped work); taking them from their cache files "
                  "or computing them here", len(indices))
  again = []
  fingerprints = {}
  for i in indices:
    try:
      fingerprints[i] = cache.SourceFingerprint.of(refs[i].path)
    except OSError as e:
      yield i, None, f"cannot read it ({e.strerror})"
      continue
    vector = store.load(refs[i], fingerprints[i])
    if vector is not None:
      yield i, vector, None
    else:
      again.append(i)
  if not again:
    return
  extractor = _extractor(work, config)
  try:
    for j, vector, error in extractor.compute([refs[i] for i in again]):
      i = again[j]
      if vector is not None:  # fill leaves storing to the pipeline.
        store.store(refs[i], np.asarray(vector, np.float32), fingerprints[i])
      yield i, vector, error
  finally:
    extractor.close()


def compute_bottlenecks(image_lists: images.ImageLists, fx: FeatureExtractor,
                        config: RunConfig, random_seed: int = 0,
                        what: str = "Bottlenecks",
                        stats: Optional[Dict[str, np.ndarray]] = None
                        ) -> Tuple[Dict[str, LabeledBottlenecks],
                                   cache.FillResult, int]:
  """The bottlenecks of every image, by set, from the cache or computed.

  With augmentation, the training set also holds `config.copies()` distorted
  copies of every training image, each cached under its own model tag.
  Returns (sets, fill result of the originals, augmented vectors computed).
  Several models in one (fx.parts): each model's vectors cached under its
  own tag, joined (combined.join); the counts are summed over the models.
  `stats`: a dict that gets the photo statistics of the originals decoded
  here (by the first model, with several), for photo_statistics.
  """
  if fx.parts:
    return _joined([compute_bottlenecks(image_lists, part, config,
                                        random_seed, f"{what} ({part.source})",
                                        stats if i == 0 else None)
                    for i, part in enumerate(fx.parts)])
  refs, truth, category = _refs(image_lists)
  result = _fill(cache.BottleneckCache(config.bottleneck_dir, fx.tag), refs,
                 what, _Work(fx, stats=stats), config)
  copies = config.copies()
  # The sets refer to rows of the memory-mapped index: nothing is loaded
  # yet (see keep_in_memory).
  sets = {}
  for cat in images.CATEGORIES:
    keep = (category == cat) & result.ok
    rows = np.flatnonzero(keep)
    sets[cat] = LabeledBottlenecks(
        result.vectors, truth[keep], [refs[i].path for i in rows], rows)
  augmented = 0
  if copies:
    distortions = config.distortions()
    train_keep = (category == images.TRAINING) & result.ok
    train_refs = [r for r, k in zip(refs, train_keep) if k]
    parts = [sets[images.TRAINING]]
    for copy in range(1, copies + 1):
      tag = augmented_tag(fx.tag, distortions, random_seed, copy)
      filled = _fill(cache.BottleneckCache(config.bottleneck_dir, tag),
                     train_refs, f"Augmented copy {copy}/{copies}",
                     _Work(fx, distortions, copy, random_seed), config)
      augmented += filled.computed
      rows = np.flatnonzero(filled.ok)
      parts.append(LabeledBottlenecks(
          filled.vectors, truth[train_keep][rows],
          [f"{train_refs[i].path}{AUGMENTED_MARK}{copy}" for i in rows],
          rows))
    # Still a view over the memory-mapped cache files (keep_in_memory).
    sets[images.TRAINING] = LabeledBottlenecks.stack(parts)
    logging.info("Augmentation: %d distorted copies of %d training images "
                 "(%s), %d computed, the rest from cache", copies,
                 len(train_refs), distortions, augmented)
  return sets, result, augmented


def _joined(results):
  """compute_bottlenecks' answer for several models from each model's."""
  from retrain.features import combined  # pylint: disable=g-import-not-at-top
  filled = [f for _, f, _ in results]
  failures, seen = [], set()
  for f in filled:
    for path, reason in f.failures:
      if path not in seen:
        seen.add(path)
        failures.append((path, reason))
  ok = np.logical_and.reduce([f.ok for f in filled])
  return (combined.join([s for s, _, _ in results]),
          cache.FillResult(None, ok, failures,
                           sum(f.from_cache for f in filled),
                           sum(f.computed for f in filled)),
          sum(a for _, _, a in results))


def _refs(image_lists: images.ImageLists
          ) -> Tuple[List[cache.ImageRef], np.ndarray, np.ndarray]:
  """Every listed image's ImageRef, class index (int64) and set name, in
  class then set order."""
  refs, truth, category = [], [], []
  for class_index, class_images in enumerate(image_lists.classes):
    for cat in images.CATEGORIES:
      for rel in class_images.images(cat):
        refs.append(cache.ImageRef(image_lists.path(class_images, rel),
                                   class_images.dir_name, rel))
        truth.append(class_index)
        category.append(cat)
  return refs, np.array(truth, np.int64), np.array(category)


def cached_bottlenecks(image_lists: images.ImageLists, fx: FeatureExtractor,
                       bottleneck_dir: str
                       ) -> Tuple[Dict[str, LabeledBottlenecks], List[str]]:
  """The originals' bottlenecks that are in the cache, by set, read only
  (nothing computed or written), and the paths of the images not cached
  (by any of several models)."""
  if fx.parts:
    from retrain.features import combined  # pylint: disable=g-import-not-at-top
    each = [cached_bottlenecks(image_lists, p, bottleneck_dir)
            for p in fx.parts]
    missing = sorted({path for _, m in each for path in m})
    return ({c: s.in_memory() for c, s in
             combined.join([s for s, _ in each]).items()}, missing)
  refs, truth, category = _refs(image_lists)
  vectors, found = cache.BottleneckCache(bottleneck_dir, fx.tag).lookup(
      refs, fx.bottleneck_size)
  sets = {}
  for cat in images.CATEGORIES:
    keep = np.flatnonzero((category == cat) & found)
    sets[cat] = LabeledBottlenecks(vectors[keep], truth[keep],
                                   [refs[i].path for i in keep])
  return sets, [r.path for r, f in zip(refs, found) if not f]


def keep_in_memory(sets: Dict[str, LabeledBottlenecks],
                   config: RunConfig, what: str = "Bottlenecks"
                   ) -> Dict[str, LabeledBottlenecks]:
  """The sets loaded into memory, unless larger than the memory budget; then
  training reads them where needed from the memory-mapped cache index."""
  size = sum(len(s) * s.x.shape[1] * 4 for s in sets.values()
             if s.rows is not None)
  if size <= in_memory_limit(config):
    return {cat: s.in_memory() for cat, s in sets.items()}
  logging.info("%s (%.0f MB) exceed --max_in_memory_mb; training reads "
               "them from the memory-mapped cache index", what, size / 2**20)
  return sets


def in_memory_limit(config: RunConfig) -> int:  # bytes
  """Bytes of bottlenecks held in memory before training reads them from
  disk: --max_in_memory_mb, or by default a quarter of physical memory."""
  if config.max_in_memory_mb > 0:
    return int(config.max_in_memory_mb * 2**20)
  try:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
  except (ValueError, OSError, AttributeError):
    return 2 * 2**30


def augmented_tag(tag: str, distortions, random_seed: int, copy: int) -> str:
  """The cache tag of augmented copy `copy`: model + distortions + seed."""
  digest = hashlib.sha1(repr((tuple(distortions), random_seed)).encode()
                        ).hexdigest()[:8]
  return f"{tag}.aug{copy}-{digest}"


def folder_bottlenecks(folder: str, fx: FeatureExtractor, config: RunConfig,
                       what: str = "Unknown photos"
                       ) -> Tuple[np.ndarray, List[str],
                                  List[Tuple[str, str]]]:
  """Every image below `folder` (no classes: --unknown_dir) through `fx`,
  from the cache or computed into it: (float32 [n, D] vectors, their paths,
  (path, reason) of the images that could not be used)."""
  plain = config._replace(flip_left_right=False, random_crop=0,
                          random_scale=0, random_brightness=0,
                          augmentation_copies=0)
  sets, filled, _ = compute_bottlenecks(images.folder_images(folder), fx,
                                        plain, what=what)
  found = sets[images.TESTING]
  return (np.asarray(found.take(np.arange(len(found))), np.float32),
          list(found.paths), list(filled.failures))


class PhotoStats(NamedTuple):
  """Every usable original's photo statistics (data/photo_stats.py)."""
  paths: List[str]
  values: np.ndarray  # float32 [n, photo_stats.COUNT]


def photo_statistics(image_lists: images.ImageLists, fx: FeatureExtractor,
                     config: RunConfig,
                     decoded: Optional[Dict[str, np.ndarray]] = None,
                     read_only: bool = False) -> PhotoStats:
  """The photo statistics of every listed image, cached beside its
  bottleneck (their own tag, photo_stats.tag): those `decoded` holds (made
  while its bottleneck was computed) are stored, the rest read from the
  cache (with --beam_runner the workers wrote them beside the vectors),
  and the ones still missing (a cache from before the statistics)
  computed by decoding only, no CNN.
  read_only: nothing computed or written (python -m retrain.audit)."""
  from retrain.data import photo_stats  # pylint: disable=g-import-not-at-top
  from retrain.features.extract import ImageDecoder  # pylint: disable=g-import-not-at-top
  model = fx.parts[0] if fx.parts else fx
  refs, _, _ = _refs(image_lists)
  store = cache.BottleneckCache(config.bottleneck_dir,
                                photo_stats.tag(model.tag))
  if read_only:
    values, found = store.lookup(refs, photo_stats.COUNT)
    keep = np.flatnonzero(found)
    return PhotoStats([refs[i].path for i in keep], values[keep])
  decoded = decoded or {}

  def compute(missing):
    decoder = None
    progress = None
    try:
      for i, ref in enumerate(missing):
        value = decoded.get(ref.path)
        if value is None:
          if decoder is None:
            decoder = ImageDecoder(model.input_size, rule=model.preprocessing)
            progress = Progress("Photo statistics", len(missing))
          image, error, size = decoder.decode_sized(ref.path)
          if image is None:
            yield i, None, error
            continue
          value = photo_stats.compute(image, size)
          progress.update(i + 1)
        yield i, value, None
    finally:
      if decoder is not None:
        decoder.close()
        progress.close()
  # Kept in the packed index only (compute_stores: no sidecar file per
  # photo, which would cost more than the statistics): an interrupted run
  # recomputes them from the photos, without the CNN.
  result = store.fill(refs, compute, photo_stats.COUNT, compute_stores=True)
  keep = np.flatnonzero(result.ok)
  return PhotoStats([refs[i].path for i in keep],
                    np.asarray(result.vectors[keep], np.float32))
