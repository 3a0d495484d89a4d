"""Shared test set-up: quiet TensorFlow, the ../shared folder, tmp folders."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from retrain import tfimport  # pylint: disable=g-import-not-at-top

tfimport.quiet_tensorflow()


def shared_dir() -> str:
  """The read-only ../shared folder: $RETRAIN_SHARED_DIR or beside the repo."""
  return os.environ.get("RETRAIN_SHARED_DIR",
                        os.path.join(os.path.dirname(REPO), "shared"))


@pytest.fixture(scope="session")
def shared():
  """Path of ../shared. Fails under CI=true when missing, else skips."""
  path = shared_dir()
  if not os.path.isdir(os.path.join(path, "models")):
    message = (f"{path} (real models and photos) is missing; set "
               "RETRAIN_SHARED_DIR or place shared/ beside the repository")
    if os.environ.get("CI") == "true":
      pytest.fail(message)
    pytest.skip(message)
  return path


@pytest.fixture(scope="session")
def small_models(tmp_path_factory):
  """Small models the tests build: paths by name."""
  from tests import fixtures  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("models")
  return {
      "inception": fixtures.make_inception_like_graph(
          str(root / "classify_image_graph_def.pb")),
      "hub": fixtures.make_feature_saved_model(str(root / "hub_fv")),
      "hub_nosig": fixtures.make_feature_saved_model(
          str(root / "hub_nosig"), signature=False),
      "hub_dynamic": fixtures.make_feature_saved_model(
          str(root / "hub_dynamic"), static_size=False, signature=False),
      "tf1": fixtures.make_tf1_saved_model(str(root / "tf1_module")),
      "not_image": fixtures.make_non_image_saved_model(
          str(root / "not_image")),
  }


@pytest.fixture(scope="session")
def color_images(tmp_path_factory):
  """A folder of 3 colour classes, 24 images each (JPEG and PNG)."""
  from tests import fixtures  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("photos")
  return fixtures.make_color_images(str(root), formats=("jpeg", "png"))
