"""tools/prepare_data.py and tools/benchmark_data.py (smoke tests; no timing
assertions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _load(name: str):
  spec = importlib.util.spec_from_file_location(f"_tool_{name}",
                                                _TOOLS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_prepare_data_cli(tmp_path, capsys):
  tool = _load("prepare_data")
  argv = ["--dataset", "synthetic", "--data_dir", str(tmp_path),
          "--num_classes", "3", "--images_per_class", "2", "--image_size",
          "16", "--no_progress"]
  assert tool.main(argv) == 0
  out = capsys.readouterr().out
  assert "synthetic/c3_n2_s16_seed0 prepared at" in out
  assert "2  blue triangle" in out
  assert tool.main(argv) == 0
  assert "already prepared (reused)" in capsys.readouterr().out
  assert tool.main(argv + ["--overwrite"]) == 0
  assert "c3_n2_s16_seed0 prepared at" in capsys.readouterr().out


def test_prepare_data_cli_reports_errors(tmp_path, capsys):
  tool = _load("prepare_data")
  (tmp_path / "raw" / "junk").mkdir(parents=True)
  code = tool.main(["--dataset", "isic2018", "--manual_dir",
                    str(tmp_path / "raw"), "--data_dir", str(tmp_path),
                    "--no_progress"])
  assert code == 1
  err = capsys.readouterr().err
  assert err.startswith("ERROR: Could not find ISIC2018_Task3_Training_Ground")
  assert "challenge.isic-archive.com" in err
  with pytest.raises(SystemExit):
    tool.main(["--dataset", "mnist"])


def test_benchmark_prints_one_json_line_per_shot(tmp_path, capsys):
  tool = _load("benchmark_data")
  assert tool.main(["--episodes", "2", "--num_classes", "5",
                    "--images_per_class", "20", "--source_size", "24",
                    "--image_size", "24", "--num_workers", "2",
                    "--data_dir", str(tmp_path)]) == 0
  lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()
           if x.startswith("{")]
  assert [x["shot"] for x in lines] == [1, 5]
  assert all(x["episodes"] == 2 and x["episodes_per_s"] > 0 for x in lines)
