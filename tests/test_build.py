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
    if not (rule.startswith("py_") or rule == "filegroup"):
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
  for pattern in ("retrain/*.py", "retrain/*/*.py", "cache/*.py",
                  "tests/*.py"):
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
  match = re.search(r"<!-- test-command -->\s*```sh\n(.+?)\n```", readme,
                    re.S)
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


def _imports(path, modules):
  """The modules (of `modules`) that `path` imports, anywhere in it."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      # `from pkg import mod` imports pkg.mod; `from mod import name`, mod.
      names = [f"{node.module}.{a.name}"
               if f"{node.module}.{a.name}" in modules else node.module
               for a in node.names]
    else:
      continue
    found.update(n for n in names if n in modules)
  return found


def _module_files():
  return sorted(glob.glob(os.path.join(REPO, "retrain", "*.py")) +
                glob.glob(os.path.join(REPO, "retrain", "*", "*.py")) +
                glob.glob(os.path.join(REPO, "cache", "*.py")))


def _module_graph():
  modules = {}
  for path in _module_files():
    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    modules[name.replace(".__init__", "")] = path
  graph = {}
  for name, path in modules.items():
    graph[name] = _imports(path, modules) - {name}
  return graph


def test_import_graph_has_no_cycles():
  graph = _module_graph()
  state = {}

  def visit(name, trail):
    if state.get(name) == "done":
      return
    assert state.get(name) != "open", " -> ".join(trail + [name])
    state[name] = "open"
    for dep in sorted(graph[name]):
      visit(dep, trail + [name])
    state[name] = "done"
  for name in sorted(graph):
    visit(name, [])


def test_data_flows_one_way():
  """cache/ knows nothing of retrain or TensorFlow; only the entry points
  import the pipeline; label_image's top level needs no TensorFlow."""
  graph = _module_graph()
  for name, deps in graph.items():
    if name.startswith("cache"):
      assert not [d for d in deps if d.startswith("retrain")], name
    if "retrain.pipeline" in deps:
      assert name in ("retrain.__main__", "retrain.audit.__main__"), name
  for path in glob.glob(os.path.join(REPO, "cache", "*.py")):
    with open(path, encoding="utf-8") as f:
      assert "tensorflow" not in f.read(), path
  tf_free = {"retrain.label_image", "retrain.cli", "retrain.tfimport",
             "retrain.deploy.metadata", "retrain.deploy.classifiers",
             "retrain.data.pil_preprocess", "retrain.data.images",
             "retrain.data.imageinfo", "retrain.errors", "retrain.config",
             "retrain.audit.neighbours", "retrain.audit.duplicates",
             "retrain.audit.outliers"}
  for name in tf_free:
    with open(os.path.join(REPO, *name.split(".")) + ".py",
              encoding="utf-8") as f:
      top_level = [l for l in f.read().splitlines()
                   if l.startswith(("import ", "from "))]
    assert not [l for l in top_level
                if re.match(r"(import|from) tensorflow\b", l)], name
    for dep in graph[name]:
      if dep in graph and dep not in tf_free and not dep.startswith("cache"):
        # Only imported inside functions, when TensorFlow is there.
        with open(os.path.join(REPO, *name.split(".")) + ".py",
                  encoding="utf-8") as f:
          assert not [l for l in f.read().splitlines()
                      if l.startswith(("import ", "from ")) and
                      dep.split(".")[-1] in l], (name, dep)


# The packages in data-flow order: a module may import its own package and
# those of a lower rank, never one of the same rank or above (data and
# reports share the bottom). "foundation" is what every stage shares.
LAYERS = (
    ("cache", ("cache",)),
    ("foundation", ("retrain", "retrain.errors", "retrain.config",
                    "retrain.tfimport")),
    ("data", ("retrain.data",)),
    ("reports", ("retrain.reports",)),
    ("features", ("retrain.features",)),
    ("training", ("retrain.training",)),
    ("deploy", ("retrain.deploy",)),
    ("audit", ("retrain.audit",)),
    ("retrain_lib", ("retrain.cli", "retrain.flags", "retrain.checks",
                     "retrain.pipeline")),
    ("entry points", ("retrain.__main__", "retrain.label_image",
                      "retrain.audit.__main__")),
)
RANKS = {"cache": 0, "foundation": 1, "data": 2, "reports": 2, "features": 3,
         "training": 4, "deploy": 5, "audit": 5,
         "retrain_lib": 6, "entry points": 7}


def _layer(module):
  for layer, prefixes in LAYERS:  # An entry point inside a package.
    if layer == "entry points" and module in prefixes:
      return layer
  for layer, prefixes in LAYERS:
    for prefix in prefixes:
      if module == prefix or (prefix not in ("retrain",) and
                              module.startswith(prefix + ".")):
        return layer
  raise AssertionError(f"{module} is in no layer of tests/test_build.py")


def test_packages_import_only_downward():
  """Every import goes to the module's own package or one of lower rank;
  every module sits in a layer (a new one must be placed)."""
  wrong = []
  for name, deps in _module_graph().items():
    layer = _layer(name)
    for dep in deps:
      other = _layer(dep)
      if other != layer and RANKS[other] >= RANKS[layer]:
        wrong.append(f"{name} ({layer}) imports {dep} ({other})")
  assert not wrong, "\n".join(wrong)


def test_build_libraries_follow_the_packages():
  """One BUILD library per layer, declaring exactly its layer's modules and
  deps on the layers its modules import (all of lower rank)."""
  targets = _targets()
  graph = _module_graph()
  for name, deps in graph.items():
    layer = _layer(name)
    if layer == "entry points":
      continue
    rule, kwargs = targets[layer]
    path = os.path.relpath(os.path.join(REPO, *name.split(".")), REPO)
    srcs = kwargs["srcs"]
    assert (path + ".py" in srcs or
            os.path.join(path, "__init__.py") in srcs), (name, layer)
    needed = {_layer(d) for d in deps} - {layer}
    declared = {d[1:] for d in kwargs.get("deps", [])}
    assert needed <= declared, (layer, name, needed - declared)
  for layer, _ in LAYERS[:-1]:
    for dep in targets[layer][1].get("deps", []):
      assert RANKS[dep[1:]] < RANKS[layer], (layer, dep)


def test_every_package_says_what_it_holds_and_may_import():
  for init in glob.glob(os.path.join(REPO, "retrain", "*", "__init__.py")):
    with open(init, encoding="utf-8") as f:
      doc = ast.get_docstring(ast.parse(f.read()))
    assert doc and "import" in doc.lower(), init
