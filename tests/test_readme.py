"""README.md and docs/: the Python snippets run as written, the commands and
links point at files that exist, and every function the method docs name
exists.
"""

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
METHOD = (REPO / "docs" / "method.md").read_text()


def python_blocks(text):
  return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_docs_readme_has_a_runnable_python_snippet():
  assert python_blocks(README), "README.md has no ```python block"


@pytest.mark.parametrize("index", range(len(python_blocks(README))))
def test_docs_readme_python_snippet_runs(index, capsys):
  """Each ```python block of README.md, executed as written."""
  code = python_blocks(README)[index]
  exec(compile(code, f"README.md python block {index}", "exec"), {})
  assert capsys.readouterr().out.strip(), "the snippet printed nothing"


def test_docs_ci_blocks():
  """.ci/run reads the first line after these markers."""
  for marker in ("<!-- ci:demo -->", "<!-- ci:test -->"):
    after = README.split(marker, 1)[1].lstrip("\n").splitlines()
    assert after[0] == "```bash", marker
    assert after[1].strip() and not after[2].startswith(" "), marker
  demo = README.split("<!-- ci:demo -->", 1)[1].splitlines()[2]
  assert "--config configs/episodic/demo.py" in demo
  assert "--workdir /tmp/jaxfsl-demo" in demo


def test_docs_links_and_config_paths_exist():
  assert "../shared" not in README
  for text, base in ((README, REPO), (METHOD, REPO / "docs")):
    for link in re.findall(r"\]\(([^)#]+)\)", text):
      if "://" not in link:
        assert (base / link).exists(), link
  for path in set(re.findall(r"configs/[\w/]+\.py", README)):
    assert (REPO / path).is_file(), path
  for name in ("method.md", "architecture.md"):
    assert f"docs/{name}" in README, name


def concept_table():
  table = METHOD.split("<!-- concept-table -->")[1].split(
      "<!-- /concept-table -->")[0]
  return re.findall(r"^\| (.+?) \| `([\w.]+):([\w.]+)` \|$", table, re.M)


def test_docs_method_table_names_exist():
  rows = concept_table()
  concepts = " ".join(c for c, _, _ in rows)
  for needed in ("L_vlm", "SVL", "class-shuffled", "RA", "fuse", "window",
                 "FT + L_v", "decomposition", "modality gap", "gap shift"):
    assert needed in concepts, needed
  for concept, module, qualname in rows:
    obj = importlib.import_module(module)
    for part in qualname.split("."):
      obj = getattr(obj, part, None)
      assert obj is not None, (concept, module, qualname)
    assert callable(obj), (concept, module, qualname)


def test_docs_method_states_the_integer_rules():
  """The release's rules for any T, with the T = 22 example the tests pin."""
  from jaxfsl.method import objective

  assert "3 f" in METHOD and "int(0.6 T)" in METHOD
  assert "4, 8, 12, 16, 22" in METHOD and "1 − 11/13" in METHOD
  assert objective.evaluation_steps(22) == (4, 8, 12, 16, 22)
  assert objective.active_window(22, objective.MethodConfig()) == (0, 12)
  assert float(objective.fuse_weight(11, 22)) == pytest.approx(1 - 11 / 13)
