"""BUILD declares every module and test; .ci/run runs the README's tests."""

import ast
import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _targets():
  """{name: (rule, kwargs)} from BUILD, parsed as the Python subset it is."""
  with open(os.path.join(REPO, "BUILD"), encoding="utf-8") as f:
    tree = ast.parse(f.read(), "BUILD")
  targets = {}
  for node in tree.body:
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
      continue
    call = node.value
    rule = call.func.id
    if not rule.startswith("py_"):
      continue
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert kwargs["name"] not in targets, f"duplicate target {kwargs['name']}"
    targets[kwargs["name"]] = (rule, kwargs)
  return targets


def test_build_declares_the_libraries_binaries_and_tests():
  targets = _targets()
  assert targets["cache"][0] == "py_library"
  assert targets["retrain_lib"][0] == "py_library"
  assert targets["retrain"][0] == "py_binary"
  assert targets["label_image"][0] == "py_binary"


def test_every_source_and_test_file_is_declared():
  targets = _targets()
  declared = set()
  for rule, kwargs in targets.values():
    for src in kwargs.get("srcs", []):
      assert os.path.isfile(os.path.join(REPO, src)), f"BUILD names {src}"
      declared.add(src)
  on_disk = set()
  for pattern in ("retrain/*.py", "cache/*.py", "tests/*.py"):
    on_disk |= {os.path.relpath(p, REPO)
                for p in glob.glob(os.path.join(REPO, pattern))}
  assert on_disk - declared == set(), "not declared in BUILD"
  tests = {os.path.splitext(os.path.basename(p))[0] for p in on_disk
           if os.path.basename(p).startswith("test_")}
  py_tests = {n for n, (rule, _) in targets.items() if rule == "py_test"}
  assert tests == py_tests


def test_deps_name_declared_targets():
  targets = _targets()
  for name, (_, kwargs) in targets.items():
    for dep in kwargs.get("deps", []) + kwargs.get("data", []):
      assert dep.startswith(":") and dep[1:] in targets, (name, dep)


def test_ci_runs_the_readme_test_command():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  match = re.search(r"<!-- test-command -->\s*```sh\n(.+?)\n```", readme)
  assert match, "README.md must mark its test command"
  with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
    ci = f.read()
  assert match.group(1).strip() in ci


def test_shared_tests_fail_without_shared_under_ci(tmp_path):
  """With CI=true a missing ../shared is a failure, elsewhere a skip."""
  import subprocess
  import sys
  base = dict(os.environ, RETRAIN_SHARED_DIR=str(tmp_path / "missing"))
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         os.path.join(REPO, "tests", "test_shared_models.py"), "-k",
         "75_percent"]
  ci = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                      env=dict(base, CI="true"))
  assert ci.returncode == 1 and "is missing" in ci.stdout, ci.stdout[-2000:]
  local = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                         env=dict(base, CI="false"))
  assert local.returncode == 0 and "skipped" in local.stdout, local.stdout


def test_readme_documents_every_flag():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  for module in ("retrain/flags.py", "retrain/label_image.py"):
    with open(os.path.join(REPO, module), encoding="utf-8") as f:
      names = re.findall(r'DEFINE_\w+\(\s*"(\w+)"', f.read())
    assert names, module
    missing = [n for n in names if f"--{n}" not in readme]
    assert not missing, f"{module} flags missing from README.md: {missing}"
