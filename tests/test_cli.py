"""The command line: a full run, and one-line errors for bad invocations."""

import os
import re

import pytest

from tests import helpers


def _outputs(tmp):
  return [f"--bottleneck_dir={tmp}/bn", f"--output_graph={tmp}/out/g.pb",
          f"--output_labels={tmp}/out/labels.txt",
          f"--summaries_dir={tmp}/sum", f"--checkpoint_path={tmp}/ckpt/c",
          f"--intermediate_output_graphs_dir={tmp}/inter"]


def test_cli_full_run_with_a_frozen_graph(small_models, color_images,
                                          tmp_path):
  proc = helpers.run_cli([f"--image_dir={color_images}",
                          f"--graph={small_models['inception']}",
                          "--how_many_training_steps=100",
                          "--learning_rate=0.05", "--eval_step_interval=50",
                          "--testing_percentage=25",
                          "--print_misclassified_test_images",
                          *_outputs(tmp_path)])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "Final test accuracy = " in proc.stderr
  assert "Step 100/100: train accuracy" in proc.stderr
  assert "MISCLASSIFIED" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert "cuda" not in proc.stderr.lower()  # TensorFlow's chatter is hidden.
  assert os.path.isfile(tmp_path / "out" / "g.pb")
  assert (tmp_path / "out" / "labels.txt").read_text() == "blue\ngreen\nred\n"


BAD = [
    ([], "--image_dir is required"),
    (["--image_dir=MISSING"], "no such folder"),
    (["--image_dir=ONE_CLASS"], "need at least 2 class"),
    (["--testing_percentage=-1"], "--testing_percentage=-1"),
    (["--validation_percentage=100"], "--validation_percentage=100"),
    (["--testing_percentage=50", "--validation_percentage=50"],
     "must be below 100"),
    (["--how_many_training_steps=0"], "--how_many_training_steps=0"),
    (["--train_batch_size=-5"], "--train_batch_size=-5"),
    (["--validation_batch_size=0"], "--validation_batch_size=0"),
    (["--eval_step_interval=0"], "--eval_step_interval=0"),
    (["--learning_rate=0"], "--learning_rate=0"),
    (["--output_graph=/proc/nope/g.pb"], "cannot write in /proc"),
    (["--output_graph=FOLDER"], "is a folder"),
    (["--graph=/nonexistent.pb"], "--graph=/nonexistent.pb: no such file"),
    (["--graph=NOT_A_GRAPH"], "not a TensorFlow GraphDef"),
    (["--graph=INCEPTION", "--bottleneck_tensor=pool_9"],
     "candidates: .*pool_3"),
    (["--graph=INCEPTION,INCEPTION"], "the same model is given twice"),
    (["--graph=INCEPTION", "--tfhub_module=HUB", "--input_mean=1,2,3"],
     "3 values for 2 models"),
    (["--graph=INCEPTION", "--tfhub_module=HUB", "--input_tensor=Mul:0,x"],
     "a value for a --tfhub_module model"),
    (["--graph=INCEPTION", "--tfhub_module=HUB", "--fine_tune_layers=1"],
     "fine-tuning works on one model"),
    (["--tfhub_module=HUB", "--input_tensor=x"],
     "applies to --graph and --architecture only"),
    (["--tfhub_module=NOT_IMAGE"], "not an image feature vector"),
    (["--tfhub_module=FOLDER"], "not a SavedModel"),
    (["--graph=INCEPTION", "--input_size=abc"], "--input_size=abc"),
    (["--graph=INCEPTION", "stray"], "unexpected argument"),
    (["--image_dir=EMPTY"], "found none"),
    (["--test_batch_size=0"], "--test_batch_size=0"),
    (["--bottleneck_batch_size=0"], "--bottleneck_batch_size=0"),
    (["--intermediate_store_frequency=-1"], "must be 0"),
    (["--final_tensor_name=bad name!"], "not a valid TensorFlow op name"),
    (["--output_labels=AFILE/labels.txt"], "is a file"),
    (["--graph=INCEPTION", "--bottleneck_tensor=Mul:0"],
     "not a vector after squeezing"),
    (["--graph=UNSAFE"], r"\(ReadFile\); refusing"),
    (["--graph=INCEPTION", "--logging_verbosity=LOUD"],
     "--logging_verbosity=LOUD: value should be one of"),
    (["--graph=INCEPTION", "--no_such_flag=1"], "Unknown command line flag"),
    (["--graph=INCEPTION", "--how_many_training_steps=many"],
     "--how_many_training_steps"),
    ([], "could not download it"),  # The default TF-Hub URL, offline.
    (["--fine_tune_layers=-1"], "--fine_tune_layers=-1: must be 0 or more"),
    (["--fine_tune_layers=2", "--fine_tune_from=Mul:0"], "both given"),
    (["--fine_tune_momentum=1"], "--fine_tune_momentum=1"),
    (["--fine_tune_batch_size=0"], "--fine_tune_batch_size=0"),
    (["--fine_tune_weight_decay=-0.5"],
     "--fine_tune_weight_decay=-0.5: must be 0 or more"),
    (["--graph=INCEPTION", "--fine_tune_pick=first"],
     "--fine_tune_pick=first: value should be one of"),
    (["--graph=INCEPTION", "--fine_tune_layers=5"],
     "has 1 weight layers below the bottleneck; pass 1 to 1"),
    (["--graph=INCEPTION", "--fine_tune_from=softmax:0"],
     "not a tensor below the bottleneck.*candidates"),
    (["--graph=INCEPTION", "--unknown_dir=FOLDER"],
     "--unknown_dir is used with --unknown_label"),
    (["--graph=INCEPTION", "--unknown_label=unknown", "--unknown_accept=1"],
     "--unknown_accept=1: must be above 0 and below 1"),
    (["--graph=INCEPTION", "--unknown_label=unknown", "--unknown_keep=3"],
     "--unknown_keep=3: must be at least 5"),
    (["--graph=INCEPTION", "--unknown_label=unknown",
      "--unknown_dir=MISSING"], "--unknown_dir=.*: no such folder"),
    (["--graph=INCEPTION", "--unknown_label=red"],
     "--unknown_label=red: a class of .* has that label"),
    (["--graph=INCEPTION", "--unknown_label=unknown",
      "--unknown_dir=EMPTY"], "no images"),
    (["--graph=INCEPTION", "--unknown_label=unknown",
      "--unknown_reject=0.9"], "--unknown_reject sets the threshold on "
     "--unknown_dir photos; pass --unknown_dir too"),
    (["--graph=INCEPTION", "--unknown_label=unknown",
      "--unknown_dir=FOLDER", "--unknown_reject=1"],
     "--unknown_reject=1: must be from 0"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_invocation_is_one_line_and_writes_nothing(
    small_models, color_images, tmp_path, args, message):
  if args == [] and "download" in message:
    if os.environ.get("RETRAIN_ONLINE"):
      pytest.skip("this machine can reach TF Hub")
    args = [f"--image_dir={color_images}"]
  elif not any(a.startswith("--image_dir") for a in args) and args:
    args = [f"--image_dir={color_images}", *args]
  one = tmp_path / "input" / "one"
  one.mkdir(parents=True)
  (one / "x.jpg").write_bytes(b"x")
  folder = tmp_path / "input" / "folder"
  folder.mkdir()
  bad = tmp_path / "input" / "bad.pb"
  bad.write_bytes(b"not a graph at all" * 5)
  empty = tmp_path / "input" / "empty"
  empty.mkdir()
  afile = tmp_path / "input" / "afile"
  afile.write_text("x")
  from tests.test_bad_input import _graph_with_read_file
  unsafe = _graph_with_read_file(tmp_path / "input" / "unsafe.pb")
  subst = {"MISSING": str(tmp_path / "nope"), "ONE_CLASS": str(one.parent),
           "EMPTY": str(empty), "AFILE": str(afile), "UNSAFE": unsafe,
           "FOLDER": str(folder), "NOT_A_GRAPH": str(bad),
           "INCEPTION": small_models["inception"], "HUB": small_models["hub"],
           "NOT_IMAGE": small_models["not_image"]}
  for key, value in subst.items():
    args = [a.replace(key, value) for a in args]
  out = tmp_path / "outputs"
  out.mkdir()
  names = {a.split("=")[0] for a in args}
  extra = [o for o in _outputs(out) if o.split("=")[0] not in names]
  proc = helpers.run_cli(args + extra)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("retrain: error: ")
  import re
  assert re.search(message, lines[0]), lines[0]
  assert "Traceback" not in proc.stderr
  assert os.listdir(out) == []


def test_label_image_errors_are_one_line(tmp_path):
  proc = helpers.run_cli(["--graph=/nonexistent.pb", "--image=x.jpg"],
                         module="retrain.label_image")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "label_image: error: --model=/nonexistent.pb: no such file or folder"]


# TensorFlow's logging settings a user may have in the environment.
LOGGING_ENVIRONMENTS = [{}, {"TF_CPP_MIN_LOG_LEVEL": "0"},
                        {"TF_CPP_MIN_LOG_LEVEL": "1"},
                        {"TF_CPP_MIN_LOG_LEVEL": "2"},
                        {"TF_CPP_MIN_LOG_LEVEL": "3"},
                        {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_CPP_MAX_VLOG_LEVEL":
                         "1"}]


@pytest.mark.parametrize("env", LOGGING_ENVIRONMENTS,
                         ids=lambda e: ",".join(f"{k}={v}"
                                                for k, v in e.items()) or "unset")
def test_bad_flag_is_one_line_under_any_logging_environment(env, tmp_path):
  for args in (["--no_such_flag=1"], ["--how_many_training_steps=many"],
               ["--logging_verbosity=DEBUG", "--no_such_flag=1"]):
    proc = helpers.run_cli([f"--image_dir={tmp_path}", *args],
                           env_updates=env)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("retrain: error: ")
  proc = helpers.run_cli(["--model=m.tflite", "--no_such_flag=1"],
                         module="retrain.label_image", env_updates=env)
  assert proc.returncode == 2
  assert proc.stderr.startswith("label_image: error: ")
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("level", [None, "1", "2", "3"])
def test_start_up_notes_are_hidden_unless_asked_for(level, tmp_path):
  """A bad input found after TensorFlow loaded: still one line."""
  env = {"TF_CPP_MIN_LOG_LEVEL": level} if level else {}
  missing = tmp_path / "missing"
  proc = helpers.run_cli([f"--image_dir={missing}", "--graph=x.pb"],
                         env_updates=env)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"retrain: error: --image_dir={missing}: no such folder; pass a folder "
      "with one sub-folder of images per class"]


def test_start_up_notes_shown_when_asked_for(tmp_path):
  missing = tmp_path / "missing"
  quiet = helpers.run_cli([f"--image_dir={missing}", "--graph=x.pb"])
  for loud in (helpers.run_cli([f"--image_dir={missing}", "--graph=x.pb"],
                               env_updates={"TF_CPP_MIN_LOG_LEVEL": "0"}),
               helpers.run_cli([f"--image_dir={missing}", "--graph=x.pb",
                                "--logging_verbosity=DEBUG"])):
    assert loud.returncode == 2
    lines = loud.stderr.strip().splitlines()
    assert lines[-1] == quiet.stderr.strip()
    assert len(lines) > 1  # TensorFlow's own notes came through.


def _step_lines(stderr):
  return [l for l in stderr.splitlines() if "Step " in l and "/" in l]


def test_log_file_gets_about_twenty_evaluation_lines(small_models,
                                                     color_images, tmp_path):
  """Not a terminal: evaluations logged every ~5% of the steps and the
  last, unless --eval_step_interval is given."""
  common = [f"--image_dir={color_images}",
            f"--graph={small_models['inception']}",
            "--how_many_training_steps=400", *_outputs(tmp_path)]
  proc = helpers.run_cli(common)
  assert proc.returncode == 0, proc.stderr[-2000:]
  steps = [int(l.split("Step ")[1].split("/")[0])
           for l in _step_lines(proc.stderr)]
  assert steps == list(range(20, 401, 20))
  explicit = helpers.run_cli(common + ["--eval_step_interval=10"])
  assert explicit.returncode == 0
  assert len(_step_lines(explicit.stderr)) == 40


def test_only_bottlenecks_fills_the_cache_and_writes_nothing_else(
    small_models, color_images, tmp_path):
  out = tmp_path / "out"
  common = [f"--image_dir={color_images}",
            f"--graph={small_models['inception']}",
            "--how_many_training_steps=20", *_outputs(out)]
  proc = helpers.run_cli(common + ["--only_bottlenecks"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "0 from cache, 72 computed" in proc.stderr
  assert sorted(os.listdir(out)) == ["bn"]  # No graph, labels, summaries.
  cached = [f for f in helpers.files_under(str(out / "bn"))
            if f.endswith(".bn")]
  assert len(cached) == 72
  assert [f for f in os.listdir(out / "bn") if f.endswith(".index")]
  train = helpers.run_cli(common)  # Trains from the cache.
  assert train.returncode == 0, train.stderr[-2000:]
  assert "72 from cache, 0 computed" in train.stderr
  assert os.path.isfile(out / "out" / "g.pb")



def _listed_flags(text):
  """The --name of each flag line of a --help text, in order."""
  return re.findall(r"^  --(?:\[no\])?(\w+)", text, re.M)


def _source_groups(path):
  """[(title, [flag, ...])] read from the module that defines the flags:
  each DEFINE belongs to the GROUPS.group(...) above it. A flag outside
  every group (before the first, after GROUPS.end()) fails here."""
  with open(os.path.join(helpers.REPO, path), encoding="utf-8") as f:
    source = f.read()
  groups, open_group = [], False
  for m in re.finditer(r'GROUPS\.group\("([^"]+)"\)|GROUPS\.end\(\)|'
                       r'DEFINE_\w+\(\s*"(\w+)"', source):
    if m.group(1):
      groups.append((m.group(1), []))
      open_group = True
    elif m.group(2):
      assert open_group, f"--{m.group(2)} ({path}) is in no group"
      groups[-1][1].append(m.group(2))
    else:
      open_group = False
  assert groups
  return groups


# Flags absl defines for itself (absl.app, absl.logging, absl.flags).
_ABSL = {"logtostderr", "alsologtostderr", "verbosity", "v", "pdb",
         "pdb_post_mortem", "run_with_pdb", "run_with_profiling",
         "profile_file", "use_cprofile_for_profiling", "logger_levels",
         "only_check_args", "helpfull", "helpshort", "helpxml", "flagfile",
         "undefok", "log_dir", "stderrthreshold", "showprefixforinfo"}


@pytest.mark.parametrize("module,sources", [
    ("retrain", ["retrain/flags.py"]),
    ("retrain.label_image", ["retrain/label_image.py"]),
    ("retrain.audit", ["retrain/audit/__main__.py", "retrain/flags.py"])])
@pytest.mark.parametrize("ask", ["--help", "-h"])
def test_help_lists_every_own_flag_once_grouped_and_no_absl_flag(
    module, sources, ask):
  # TensorFlow is not imported for help (it would fail here).
  proc = helpers.run_without_tensorflow([ask], module=module)
  assert proc.returncode == 0, proc.stderr
  text = proc.stdout
  groups = [g for source in sources for g in _source_groups(source)]
  listed = _listed_flags(text)
  assert listed == [n for _, names in groups for n in names]
  assert len(set(listed)) == len(listed)
  assert not set(listed) & _ABSL and "--logtostderr" not in text
  # Group titles in their order, each followed by its own flags.
  titles = [t for t, _ in groups] + ["Exit status"]
  for (title, names), following in zip(groups, titles[1:]):
    body = text.split(f"\n{title}:\n", 1)[1].split(f"\n{following}:", 1)[0]
    assert _listed_flags(body) == names, title
  # The exit statuses, the same as the README's.
  codes = re.findall(r"^  (\d+) ", text.split("Exit status:", 1)[1], re.M)
  with open(os.path.join(helpers.REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  stated = readme.split("Exit status: ", 1)[1].split("\n\n", 2)[1]
  assert sorted(map(int, codes)) == sorted(
      map(int, re.findall(r"^- (\d+) ", stated, re.M))) == [0, 1, 2, 3, 130]
  assert f"python -m {module} " in text


@pytest.mark.parametrize("module", ["retrain", "retrain.label_image"])
def test_helpfull_still_lists_everything_and_version_answers(module):
  full = helpers.run_without_tensorflow(["--helpfull"], module=module)
  assert full.returncode == 0, full.stderr
  assert "logtostderr" in full.stdout and "--image" in full.stdout
  version = helpers.run_without_tensorflow(["--version"], module=module)
  assert version.returncode == 0, version.stderr
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top
  program = module.split(".")[-1]
  assert version.stdout.splitlines() == [
      f"{program} {importlib.metadata.version('retrain')}",
      f"TensorFlow {importlib.metadata.version('tensorflow')}",
      f"Python {platform.python_version()}"]


def test_readme_flag_tables_follow_the_groups():
  """README.md's "Flags" section: one table per group of retrain/flags.py,
  in order, each holding exactly that group's flags."""
  with open(os.path.join(helpers.REPO, "README.md"), encoding="utf-8") as f:
    section = f.read().split("\n## Flags\n", 1)[1].split("\n## ", 1)[0]
  found = [(m.group(1), re.findall(r"^\| `--(\w+)` \|", m.group(2), re.M))
           for m in re.finditer(r"^### (.+)\n((?:.|\n)*?)(?=^### |\Z)",
                                section, re.M)]
  assert found == _source_groups("retrain/flags.py")


def test_onnx_output_without_its_extra_is_one_line_naming_it(
    color_images, tmp_path):
  """tf2onnx missing: one line naming the extra, exit 2, nothing written."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import runpy, sys; sys.modules['tf2onnx'] = None; "
          "sys.argv = ['retrain'] + sys.argv[1:]; "
          "runpy.run_module('retrain', run_name='__main__', alter_sys=True)")
  proc = subprocess.run(
      [sys.executable, "-c", code, f"--image_dir={color_images}",
       f"--onnx_output={tmp_path}/out/model.onnx", *_outputs(tmp_path)],
      capture_output=True, text=True, cwd=helpers.REPO,
      env=dict(os.environ, PYTHONPATH=helpers.REPO), timeout=600)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "--onnx_output needs tf2onnx" in lines[0]
  assert "'.[onnx]'" in lines[0]
  assert not (tmp_path / "out").exists() and not (tmp_path / "bn").exists()
