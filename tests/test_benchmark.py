"""tools/benchmark.py and jaxfsl.benchmarking: a smoke run on the tiny model
(fields present, finite, positive; no timing assertion) and the FLOP count."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from jaxfsl import benchmarking
from jaxfsl.models import PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_model_one_step():
  report = benchmarking.run(benchmarking.BenchmarkConfig(
      model="tiny-clip", steps=1, warmup=0))
  json.dumps(report)  # serialisable as the CLI prints it
  for key in ("step_seconds", "images_per_second", "episodes_per_hour",
              "tflops_per_second", "compile_seconds", "peak_memory_bytes",
              "step_tflop", "backbone_bytes", "episode_state_bytes"):
    value = report[key]
    assert isinstance(value, (int, float)) and math.isfinite(value), key
    assert value > 0, key
  assert report["episodes_per_batch"] == 1
  assert report["device_count"] >= 1 and report["device_kind"]
  assert report["images_per_episode_step"] == 30  # 25 views + 5 clean
  assert "mfu" in report  # None on CPU
  assert len(report["step_seconds_all"]) == 1
  # The same program compiled again is read from the persistent cache.
  assert report["compile_seconds_warm_cache"] > 0
  assert report["warm_compile_hit_cache"] is True
  assert report["episodes_per_batch_choice"] is None


def test_auto_batch_and_host_wait_fraction():
  report = benchmarking.run(benchmarking.BenchmarkConfig(
      model="tiny-clip", steps=1, warmup=0, episodes_per_batch="auto",
      cache_dir="off", host_wait_batches=2, host_wait_steps=2))
  # CPU, no budget: one episode per device, and the log line says why.
  assert report["episodes_per_batch"] == 1
  assert "no bytes_limit" in report["episodes_per_batch_choice"]
  assert report["compile_seconds_warm_cache"] is None
  assert 0 <= report["host_wait_fraction"] <= 1
  assert report["host_wait_total_seconds"] > 0
  assert report["host_wait_batches"] == 2 and report["host_wait_steps"] == 2
  with pytest.raises(ValueError, match="episodes_per_batch='many'"):
    benchmarking.run(benchmarking.BenchmarkConfig(
        model="tiny-clip", episodes_per_batch="many"))


def _cli():
  spec = importlib.util.spec_from_file_location(
      "benchmark_cli", os.path.join(ROOT, "tools", "benchmark.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_cli_parses_and_rejects():
  cli = _cli()
  config, quiet = cli.parse(["--model", "tiny-clip", "--shot", "5",
                             "--episodes_per_batch", "2", "--steps", "4",
                             "--option", "clean_from_views=true", "--quiet"])
  assert (config.shot, config.episodes_per_batch, config.steps) == (5, 2, 4)
  assert config.engine_options == {"clean_from_views": True} and quiet
  config, _ = cli.parse(["--episodes_per_batch", "auto",
                         "--memory_budget_gib", "0.5"])
  assert config.episodes_per_batch == "auto"
  assert config.memory_budget_bytes == 2 ** 29
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"),
       "--dtype", "float64"], capture_output=True, text=True, check=False)
  assert result.returncode != 0 and "dtype" in result.stderr


def test_parse_option_value_is_shared_by_both_tools():
  """One option-value parser (jaxfsl.benchmarking.driver), used by
  tools/benchmark.py and tools/profile_step.py alike."""
  import doctest

  from jaxfsl.benchmarking import driver

  parse = driver.parse_option_value
  assert benchmarking.parse_option_value is parse
  assert parse("TRUE") is True and parse("False") is False
  assert parse("3") == 3 and isinstance(parse("3"), int)
  assert parse("1e-3") == 1e-3 and parse("packed") == "packed"
  failures, tried = doctest.testmod(driver, verbose=False)[:2]
  assert tried >= 3 and failures == 0
  for tool in ("benchmark.py", "profile_step.py"):
    with open(os.path.join(ROOT, "tools", tool)) as f:
      source = f.read()
    assert "def _literal" not in source, tool
    assert "parse_option_value(value)" in source, tool


def test_vit_b16_flops():
  vision = PRESETS["clip-vit-b16"].vision
  per_image = benchmarking.vision_flops(vision)
  # 12 blocks of 197 tokens, width 768: 2788.8 MFLOP of projections and
  # 119.2 MFLOP of attention per block, the projection to 512, LoRA r=16.
  t, w = 197, 768
  dense = 12 * (2 * t * w * 3 * w + 2 * t * w * w + 4 * t * w * 4 * w)
  assert per_image.dense == dense + 2 * w * 512
  assert per_image.attention == 12 * 4 * t * t * w
  assert per_image.lora == 12 * 3 * 4 * t * w * 16
  assert per_image.forward == pytest.approx(35.24e9, rel=1e-3)
  step = benchmarking.step_flops(vision, 30)
  assert step == pytest.approx(2.168e12, rel=1e-3)
  assert step == 30 * (2 * per_image.dense + 3 * per_image.attention
                       + 3 * per_image.lora)


def test_peak_table():
  assert benchmarking.peak_tflops("NVIDIA H200", "bfloat16") == 989.0
  assert benchmarking.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
  assert benchmarking.peak_tflops("TPU v5 lite", "bfloat16") == 197.0
  assert benchmarking.peak_tflops("TPU v5p", "bfloat16") == 459.0
  assert benchmarking.peak_tflops("cpu", "float32") is None


def test_package_imports_no_torch():
  script = ("import sys, jaxfsl.benchmarking, "
            "jaxfsl.protocols.episodic.engine; "
            "print('torch' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, check=True)
  assert result.stdout.strip() == "False"


def test_defaults_come_from_base_config():
  from jaxfsl.configs.base import get_config

  c = get_config()
  config = benchmarking.default_engine_config(5, "ra")
  assert config.steps == c.epochs * 5 and config.shot == 5
  assert config.optim.lr == c.optim.lr
  assert config.method.variant == "ra"
  assert config.method.relation_weight == c.method.relation_weight
  assert config.lora.rank == c.lora.rank and config.trainable == c.trainable
  with pytest.raises(ValueError, match="torch_reference"):
    benchmarking.run(benchmarking.BenchmarkConfig(
        model="tiny-clip", against="torch"))


def test_against_torch_on_tiny_model_has_caveat():
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  report = _cli().main(["--model", "tiny-clip", "--steps", "1", "--warmup",
                        "0", "--against", "torch", "--quiet"])
  assert report["torch_step_seconds"] > 0
  assert report["pairs"] == 1
  spread = report["speedup_vs_torch_paired_spread"]
  assert spread["min"] == spread["max"] == report["speedup_vs_torch_paired"]
  assert "overheads" in report["speedup_caveat"]
