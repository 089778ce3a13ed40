"""Configs: release defaults, target files, validation errors naming the key,
missing inputs, and refusing to resume a workdir of another config.

Nothing here trains; the CLI checks run ``python -m jaxfsl.main`` only as far
as its error.
"""

import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from jaxfsl.data import DatasetNotPreparedError
from jaxfsl.protocols.episodic import runner as experiment

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def load(name):
  folder = CONFIGS if name == "base" else CONFIGS / "episodic"
  return experiment.load_config(folder / f"{name}.py")


def test_loading_a_config_imports_no_jax():
  """Config files are plain Python + ml_collections: no JAX at load time."""
  probe = ("import sys, importlib.util as u; "
           f"s = u.spec_from_file_location('c', {str(CONFIGS / 'episodic' / 'isic.py')!r}); "
           "m = u.module_from_spec(s); s.loader.exec_module(m); m.get_config(); "
           "bad = [n for n in ('jax', 'flax', 'optax', 'tensorflow') "
           "if n in sys.modules]; print(bad); raise SystemExit(1 if bad else 0)")
  p = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                     text=True, cwd=REPO)
  assert p.returncode == 0, p.stdout + p.stderr


def test_base_is_the_schema():
  assert load("base").to_dict() == experiment.default_config().to_dict()


def test_release_defaults():
  c = load("base")
  assert (c.way, c.shot, c.query, c.epochs, c.episodes) == (5, 1, 15, 250, -1)
  assert c.model.checkpoint and not c.model.init
  assert c.method.to_dict() == dict(
      variant="svl_ra", anti_visual_weight=0.1, relation_weight=3.0,
      visual_weight=1.0, stage1_fraction=0.6, timing="begin",
      relation_form="release")
  assert c.lora.to_dict() == dict(rank=16, alpha=8.0, dropout=0.25,
                                  targets=("q", "k", "v"), towers="vision",
                                  blocks="all")
  assert c.optim.to_dict() == dict(lr=2e-4, b1=0.9, b2=0.999, eps=1e-8,
                                   weight_decay=1e-2, min_lr=1e-6,
                                   period_factor=8.0)
  assert c.logit_scale == 100.0 and c.prompt == "a photo of a {}."


@pytest.mark.parametrize("name,dataset,epochs", [
    ("chestx", "chestx", 125), ("isic", "isic2018", 250),
    ("eurosat", "eurosat", 250), ("cropdisease", "crop_disease", 250)])
def test_target_configs(name, dataset, epochs):
  c = load(name)
  assert c.dataset.name == dataset and c.epochs == epochs
  r = experiment.resolve(c, num_devices=1)
  assert (r.episodes, r.steps) == (800, epochs)
  c.shot = 5
  r = experiment.resolve(c, num_devices=1)
  assert (r.episodes, r.steps) == (400, 5 * epochs)
  c.episodes, c.steps = 7, 3
  r = experiment.resolve(c, num_devices=1)
  assert (r.episodes, r.steps) == (7, 3)
  engine = experiment.engine_config(r)
  assert engine.lora.scaling == 2.0 and engine.method.variant == "svl_ra"


def test_demo_config():
  c = load("demo")
  assert c.demo and c.model.init == "tiny-clip" and not c.model.checkpoint
  assert c.dataset.name == "synthetic" and c.dataset.prepare_synthetic
  experiment.validate(c)


def test_episodes_per_batch_rounds_up_to_devices():
  c = load("demo")
  for epb, devices, expected in [(1, 4, 4), (6, 4, 8), (8, 4, 8), (3, 1, 3)]:
    c.episodes_per_batch = epb
    assert experiment.resolve(c, num_devices=devices).episodes_per_batch == (
        expected)


def _bad(key, value, *fragments):
  """Sets ``key`` (dotted) to ``value`` and expects a ConfigError naming it.

  Works on a plain dict, as a config file built from scratch could hold
  anything (ConfigDict itself refuses type changes of existing fields).
  """
  d = load("demo").to_dict()
  *parents, last = key.split(".")
  node = d
  for p in parents:
    node = node[p]
  node[last] = value
  with pytest.raises(experiment.ConfigError) as e:
    experiment.validate(ml_collections.ConfigDict(d))
  for f in fragments or (key,):
    assert f in str(e.value), str(e.value)


def test_unknown_key():
  _bad("shots", 5, "unknown", "shots")
  _bad("method.svl_weight", 0.1)


def test_wrong_types():
  _bad("shot", "5", "'shot'", "int", "str")
  _bad("shot", 2.5, "'shot'")
  _bad("lora.rank", True, "'lora.rank'")
  _bad("save_adapters", 1, "'save_adapters'", "bool")
  _bad("optim.lr", "2e-4", "'optim.lr'", "float")


def test_bad_values():
  _bad("method.variant", "svl+ra", "method.variant", "svl_ra")
  _bad("compute_dtype", "fp16", "compute_dtype", "float16")
  _bad("lora.blocks", "top")
  _bad("lora.targets", ("q", "x"))
  _bad("method.timing", "end")
  _bad("method.relation_form", "kl")
  _bad("shot", 0, "'shot'", ">= 1")
  _bad("episodes", 0, "'episodes'")
  _bad("lora.dropout", 1.0)
  _bad("model.checkpoint", "/x", "model.checkpoint", "model.init")
  _bad("prompt", "a photo")
  _bad("dataset.name", "imagenet")
  _bad("model.init", "clip-vit-b15")
  d = load("demo")
  d.eval_only = d.restart = True
  with pytest.raises(experiment.ConfigError, match="eval_only"):
    experiment.validate(d)


def test_lora_targets_and_blocks_parsing():
  c = load("demo")
  c.lora.targets = ("q,v",)
  c.lora.blocks = "0,1"
  engine = experiment.engine_config(experiment.resolve(c, num_devices=1))
  assert engine.lora.targets == ("q", "v") and engine.lora.blocks == (0, 1)


def test_missing_checkpoint(tmp_path):
  c = load("eurosat")
  c.model.checkpoint = str(tmp_path / "no_such_model")
  with pytest.raises(experiment.MissingInputError) as e:
    experiment.run(c, tmp_path / "work")
  msg = str(e.value)
  assert "no_such_model" in msg and "does not exist" in msg
  assert "huggingface.co/openai/clip-vit-base-patch16" in msg
  assert "huggingface-cli download" in msg


def test_dataset_not_prepared(tmp_path):
  c = load("eurosat")
  c.model.checkpoint, c.model.init = "", "tiny-clip"
  c.dataset.data_dir = str(tmp_path / "data")
  with pytest.raises(DatasetNotPreparedError) as e:
    experiment.run(c, tmp_path / "work")
  msg = str(e.value)
  assert "python tools/prepare_data.py --dataset eurosat" in msg
  assert "EuroSAT" in msg and "zenodo" in msg


def test_synthetic_not_generated_unless_asked(tmp_path):
  c = load("demo")
  c.dataset.prepare_synthetic = False
  with pytest.raises(DatasetNotPreparedError, match="--dataset synthetic"):
    experiment.run(c, tmp_path / "work")


def _saved_state(workdir, config):
  """A run state as a job would leave it after 4 episodes (no training)."""
  config = experiment.resolve(config, num_devices=1)
  state = experiment.RunState(Path(workdir) / "state")
  state.save({"next_episode": 4, "fingerprint": experiment.fingerprint(config),
              "config": config.to_dict()},
             {"index": np.arange(4), "stages": {"accuracy": np.zeros((4, 5))}})
  state.close()


def test_changed_config_is_refused_then_restart(tmp_path):
  work = tmp_path / "work"
  _saved_state(work, load("demo"))
  (work / "data").mkdir()
  changed = load("demo")
  changed.shot, changed.method.variant = 5, "none"
  with pytest.raises(experiment.ResumeError) as e:
    experiment.run(changed, work)
  msg = str(e.value)
  assert "shot: 1 -> 5" in msg and "method.variant: 'svl_ra' -> 'none'" in msg
  assert "--restart" in msg
  # Run-only keys may change on resume.
  same = load("demo")
  same.episodes_per_batch, same.episodes = 8, 1000
  assert experiment.prepare_workdir(
      experiment.resolve(same, num_devices=1), work, restart=False) is not None
  # restart discards the run but keeps other files (the demo's data).
  assert experiment.prepare_workdir(
      experiment.resolve(changed, num_devices=1), work, restart=True) is None
  assert not (work / "state").exists() and (work / "data").is_dir()


def _cli(*args, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "jaxfsl.main", *args],
                        capture_output=True, text=True, timeout=timeout,
                        cwd=REPO, env=env)


def test_cli_unknown_override_key(tmp_path):
  p = _cli("--config", "configs/episodic/demo.py", "--config.method.svl_weight=1",
           "--workdir", str(tmp_path))
  assert p.returncode == 2
  assert "unknown config key 'method.svl_weight'" in p.stderr
  assert "anti_visual_weight" in p.stderr  # The known keys are listed.
  assert "Traceback" not in p.stderr


def test_cli_wrong_type(tmp_path):
  p = _cli("--config", "configs/episodic/demo.py", "--config.shot=five",
           "--workdir", str(tmp_path))
  assert p.returncode != 0 and "--config.shot" in p.stderr


def test_cli_missing_checkpoint(tmp_path):
  p = _cli("--config", "configs/episodic/isic.py",
           f"--config.model.checkpoint={tmp_path}/nothing",
           "--workdir", str(tmp_path / "w"))
  assert p.returncode == 1, p.stderr[-2000:]
  assert "ERROR: model.checkpoint" in p.stderr
  assert "huggingface-cli download" in p.stderr
  assert "Traceback" not in p.stderr
