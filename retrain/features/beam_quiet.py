"""Beam and Dask processes without their start-up chatter.

Called before Apache Beam is imported, by the driver (beam_extract) and by
every worker process (beam_extract again, as the pipeline's DoFn is
unpickled; dask_cluster's preload in a local Dask worker). Imports neither
Beam nor Dask.
"""

import logging as std_logging
import os

from absl import logging

from retrain import tfimport


def quiet_local_beam() -> bool:
  """On a run without --verbosity=1, Beam's and Dask's start-up notes (a
  PrismRunner download tried and given up offline, optional Google Cloud
  clients missing, each worker's set-up) are hidden, and TensorFlow is
  imported without its own; True if so (False: all shown)."""
  quiet = logging.get_verbosity() < logging.DEBUG
  if quiet:
    for name in ("apache_beam", "distributed"):
      std_logging.getLogger(name).setLevel(std_logging.ERROR)
    root = std_logging.getLogger()
    if _drop_beam_notes not in root.filters:
      root.addFilter(_drop_beam_notes)
  tfimport.quiet_tensorflow(show_startup=not quiet)
  return quiet


def _drop_beam_notes(record: std_logging.LogRecord) -> bool:
  """Drops Beam's notes logged on the root logger (below ERROR)."""
  return record.levelno >= std_logging.ERROR or (
      f"{os.sep}apache_beam{os.sep}" not in record.pathname)
