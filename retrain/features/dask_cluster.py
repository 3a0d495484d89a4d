"""A local Dask cluster for --beam_runner=DaskRunner without an address.

Beam's DaskRunner connects to the scheduler that --dask_client_address (or
--dask_scheduler_file) names; without one, retrain starts a cluster of worker
processes on this machine, on loopback, for the run and closes it after.
Its workers import TensorFlow quietly as they start (this module is their
preload), while the driver lists the images.

Importing this module imports neither Dask nor Beam; its functions do.
"""

import contextlib
import logging as std_logging
import shlex
from typing import Iterator

from absl import logging

# --beam_options that say where a cluster is.
_ADDRESS_OPTIONS = ("--dask_client_address", "--dask_scheduler_file")


def names_a_cluster(options: str) -> bool:
  """True if the --beam_options string points at an existing cluster."""
  return any(a.startswith(_ADDRESS_OPTIONS) for a in shlex.split(options))


@contextlib.contextmanager
def local_cluster(options: str, quiet: bool) -> Iterator[str]:
  """Yields the options with the address of a local cluster added (and
  stops the cluster afterwards), or the options as they are if they name
  a cluster already."""
  if names_a_cluster(options):
    yield options
    return
  import distributed  # pylint: disable=g-import-not-at-top
  level = std_logging.ERROR if quiet else std_logging.INFO
  # Dask configures its loggers when imported, so after that.
  std_logging.getLogger("distributed").setLevel(level)
  logging.info("Dask: starting a local cluster on 127.0.0.1 (its workers "
               "import TensorFlow first; --beam_options=--dask_client_address"
               "=HOST:PORT uses yours)")
  # Dask's own choice of workers and threads for this machine's cores (2
  # cores: 2 worker processes of 1 thread); each loads the model once.
  cluster = distributed.LocalCluster(
      processes=True, host="127.0.0.1",
      dashboard_address=None, silence_logs=level, preload=[__name__])
  try:
    yield f"{options} --dask_client_address={cluster.scheduler_address}"
  finally:
    cluster.close()


def dask_setup(worker) -> None:  # pylint: disable=unused-argument
  """Dask's preload hook, run in each local worker as it starts: imports
  TensorFlow and Beam as the pipeline's workers do, quietly."""
  from retrain.features import beam_quiet  # pylint: disable=g-import-not-at-top
  beam_quiet.quiet_local_beam()
  import apache_beam  # pylint: disable=g-import-not-at-top,unused-import
