"""tools/benchmark.py --protocol fewshot and jaxfsl.benchmarking.fewshot: a
smoke run on the tiny model (fields present, finite, positive; no timing
assertion), the protocol's defaults, and the flag checks."""

from __future__ import annotations

import json
import math

import pytest
from test_benchmark import _cli

from jaxfsl import benchmarking
from jaxfsl.benchmarking import fewshot


def test_fewshot_protocol_on_tiny_model(capsys):
  report = _cli().main([
      "--protocol", "fewshot", "--model", "tiny-clip", "--image_size", "32",
      "--batch_size", "4", "--classes", "5", "--variant", "svl_ra",
      "--steps", "2", "--warmup", "0", "--pipeline_batches", "2",
      "--source_images", "4", "--source_size", "64x48", "--num_workers", "2",
      "--quiet"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1 and json.loads(lines[0]) == report
  for key in ("iterations_per_second", "iteration_seconds",
              "train_images_per_second", "first_step_seconds",
              "pipeline_images_per_second", "pipeline_over_trainer",
              "peak_memory_bytes", "state_bytes", "backbone_bytes"):
    value = report[key]
    assert isinstance(value, (int, float)) and math.isfinite(value), key
    assert value > 0, key
  assert (report["protocol"], report["model"]) == ("fewshot", "tiny-clip")
  assert (report["batch_size"], report["classes"], report["image_size"],
          report["variant"]) == (4, 5, 32, "svl_ra")
  assert report["lora_towers"] == "both" and report["lora_rank"] == 2
  assert len(report["iteration_seconds_all"]) == 2
  assert report["train_images_per_second"] == pytest.approx(
      4 * report["iterations_per_second"])
  # ra in the variant: the pipeline also builds RA's clean view.
  assert report["pipeline_clean_view"] is True
  assert report["pipeline_source"] == "64x48 JPEG"
  assert report["pipeline_workers"] == 2 and report["device_count"] >= 1


def test_defaults_are_the_protocols():
  from jaxfsl.configs.fewshot import common
  from jaxfsl.protocols.fewshot import runner

  cli = _cli()
  cfg, quiet = cli.parse(["--protocol", "fewshot"])
  assert isinstance(cfg, benchmarking.FewshotBenchmarkConfig) and not quiet
  assert (cfg.model, cfg.dtype, cfg.variant) == ("clip-vit-b16", "float32",
                                                 "none")
  assert cfg.source_size == (500, 375)
  tcfg = runner.trainer_config(fewshot.job_config(cfg))
  base = common.get_config()
  assert tcfg.batch_size == base.fewshot.batch_size == 32
  assert tcfg.lora.towers == "both" and tcfg.lora.rank == base.lora.rank
  assert tcfg.optim.lr == base.optim.lr
  # The episodic protocol keeps its own default variant.
  episodic, _ = cli.parse([])
  assert episodic.variant == "svl_ra"


def test_flags_of_the_other_protocol_and_bad_values_are_rejected(capsys):
  cli = _cli()
  with pytest.raises(SystemExit):
    cli.parse(["--protocol", "fewshot", "--against", "torch", "--shot", "5"])
  err = capsys.readouterr().err
  assert "--shot" in err and "--against" in err and "fewshot" in err
  with pytest.raises(SystemExit):
    cli.parse(["--classes", "10"])
  assert "--classes" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.parse(["--protocol", "fewshot", "--source_size", "500"])
  with pytest.raises(ValueError) as e:
    fewshot.check(benchmarking.FewshotBenchmarkConfig(
        variant="visual", classes=0, source_size=(0, 10), batch_size=0))
  for name in ("variant='visual'", "classes=0", "source_size=(0, 10)",
               "batch_size=0"):
    assert name in str(e.value)
