"""tools/block_stack.py: the depth diagnostic's HLO facts and its errors
(no timing is asserted; the timings are the tool's output)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
  spec = importlib.util.spec_from_file_location(
      "block_stack", os.path.join(ROOT, "tools", "block_stack.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


HLO = """\
HloModule m

%fused_computation.1 (p0: f32[4], p1: pred[4]) -> f32[4] {
  %p0 = f32[4]{0} parameter(0)
  %p1 = pred[4]{0} parameter(1)
  %z = f32[4]{0} constant({0, 0, 0, 0})
  ROOT %s = f32[4]{0} select(%p1, %p0, %z)
}

%fused_computation.2 (p0: f32[4], p1: pred[4], p2: pred[4]) -> f32[4] {
  %p0 = f32[4]{0} parameter(0)
  %p1 = pred[4]{0} parameter(1)
  %p2 = pred[4]{0} parameter(2)
  %z = f32[4]{0} constant({0, 0, 0, 0})
  %s = f32[4]{0} select(%p1, %p0, %z)
  ROOT %t = f32[4]{0} select(%p2, %s, %z)
}

ENTRY %main (a: f32[4], b: pred[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %b = pred[4]{0} parameter(1)
  %x = f32[4]{0} select(%b, %a, %a)
  %y = f32[4]{0} select(%b, %x, %a)
  %z = f32[4]{0} select(%b, %y, %a)
  ROOT %f = f32[4]{0} fusion(%z, %b, %b), kind=kLoop, calls=%fused_computation.2
}
"""


def test_fused_computation_stats_reads_fusions_only():
  # The entry computation's three selects are not a fusion's: only the
  # fused computations count (2 selects, 6 instructions in the largest).
  lines, selects = _tool().fused_computation_stats(HLO)
  assert selects == 2
  assert lines == 6


@pytest.mark.parametrize("dropout,has_selects", [(0.0, False), (0.25, True)])
def test_hlo_facts_on_a_tiny_stack(dropout, has_selects, capsys):
  rows = _tool().main(["--model", "tiny-clip", "--depths", "1,2",
                       "--images", "2", "--dropout", str(dropout),
                       "--hlo_only"])
  assert [r["depth"] for r in rows] == [1, 2]
  assert all("seconds" not in r for r in rows)
  # Each dropout mask applied in the backward pass is a select; none
  # without dropout.
  assert all((r["largest_fusion_selects"] > 0) == has_selects for r in rows)
  assert all(r["largest_fusion_instructions"] > 0 for r in rows)
  assert len(capsys.readouterr().out.strip().splitlines()) == 2


@pytest.mark.parametrize("args,message", [
    (["--depths", "3,x"], "--depths '3,x': expected integers"),
    (["--depths", "0"], "every depth must be at least 1"),
    (["--model", "vit-huge"], "--model 'vit-huge': expected a preset"),
    (["--dropout", "1.5"], "--dropout 1.5: expected a rate in [0, 1)"),
    (["--dropout", "-0.1"], "--dropout -0.1: expected a rate in [0, 1)"),
    (["--images", "0"], "--images 0: expected an integer >= 1"),
    (["--rank", "0"], "--rank 0: expected an integer >= 1"),
    (["--repeats", "0"], "--repeats 0: expected an integer >= 1"),
    (["--model", "tiny-clip", "--masks", "packed", "--dropout", "0.3"],
     "--dropout 0.3 with --masks packed: expected a multiple of 1/256"),
])
def test_bad_arguments_are_named(args, message):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tools", "block_stack.py"),
       "--hlo_only", *args], capture_output=True, text=True, check=False)
  assert result.returncode == 2
  assert message in result.stderr


def test_every_bad_argument_is_named_at_once():
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tools", "block_stack.py"),
       "--hlo_only", "--depths", "0", "--images", "0", "--dropout", "1.5",
       "--model", "nope"], capture_output=True, text=True, check=False)
  assert result.returncode == 2
  for message in ("every depth must be at least 1", "--images 0",
                  "--dropout 1.5", "--model 'nope'"):
    assert message in result.stderr
