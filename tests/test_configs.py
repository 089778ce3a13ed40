"""Configs: release defaults, target files, validation errors naming the key,
missing inputs, and refusing to resume a workdir of another config.

Nothing here trains; the CLI checks run ``python -m jaxfsl.main`` only as far
as its error.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from jaxfsl.data import DatasetNotPreparedError
from jaxfsl.io.runstate import RunState
from jaxfsl.protocols.episodic import config as config_lib
from jaxfsl.protocols.episodic import runner

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def load(name):
  folder = CONFIGS if name == "base" else CONFIGS / "episodic"
  return config_lib.load_config(folder / f"{name}.py")


ALL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.py")
                     if p.name != "__init__.py")


def test_loading_a_config_imports_no_jax():
  """Config files are plain Python + ml_collections: no JAX at load time."""
  assert len(ALL_CONFIGS) >= 7, ALL_CONFIGS
  probe = ("import sys, importlib.util as u\n"
           f"for f in {[str(p) for p in ALL_CONFIGS]!r}:\n"
           "  s = u.spec_from_file_location('c', f)\n"
           "  m = u.module_from_spec(s); s.loader.exec_module(m)\n"
           "  m.get_config()\n"
           "bad = [n for n in ('jax', 'flax', 'optax', 'tensorflow') "
           "if n in sys.modules]; print(bad)\n"
           "raise SystemExit(1 if bad else 0)")
  p = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                     text=True, cwd=REPO)
  assert p.returncode == 0, p.stdout + p.stderr


def test_base_is_the_schema():
  assert load("base").to_dict() == config_lib.default_config().to_dict()
  # Every shipped episodic config has exactly base.py's keys and types; the
  # few-shot protocol's add only their own ``fewshot`` block.
  base = set(config_lib.flatten(config_lib.default_config()))
  for path in ALL_CONFIGS:
    c = config_lib.load_config(path)
    if c.protocol == "episodic":
      assert config_lib.schema_problems(c) == [], path
    else:
      own = {k for k in config_lib.flatten(c) if k not in base}
      assert all(k.startswith(f"{c.protocol}.") for k in own), (path, own)


def test_docs_every_key_has_a_comment_in_base():
  """base.py documents every key (``--help`` prints these comments)."""
  from jaxfsl import main

  comments = main.key_comments()
  flat = config_lib.flatten(config_lib.default_config())
  undocumented = [k for k in flat if k not in comments
                  and k.rsplit(".", 1)[0] not in comments]
  assert not undocumented, undocumented


def test_no_other_home_of_defaults():
  """The runner's schema is base.py: no copy of its values elsewhere in the
  job's code (the old default_config(), validation constants)."""
  folder = REPO / "jaxfsl" / "protocols" / "episodic"
  for name in ("runner.py", "config.py", "eval_only.py", "inputs.py"):
    text = (folder / name).read_text()
    for literal in ("2e-4", "period_factor=8", "relation_weight=3",
                    "250 * ", "= 0.25"):
      assert literal not in text, (name, literal)


def test_release_defaults():
  c = load("base")
  assert (c.way, c.shot, c.query, c.epochs, c.episodes) == (5, 1, 15, 250, -1)
  assert c.model.checkpoint and not c.model.init
  assert c.method.to_dict() == dict(
      variant="svl_ra", anti_visual_weight=0.1, relation_weight=3.0,
      visual_weight=1.0, window_fraction=0.6, timing="begin",
      relation_form="release")
  assert c.lora.to_dict() == dict(rank=16, alpha=8.0, dropout=0.25,
                                  targets=("q", "k", "v"), towers="vision",
                                  blocks="all", dropout_masks="bernoulli")
  assert c.optim.to_dict() == dict(name="adamw", lr=2e-4, b1=0.9, b2=0.999,
                                   eps=1e-8, weight_decay=1e-2, min_lr=1e-6,
                                   period_factor=8.0, momentum=0.9,
                                   warmup_steps=0, warmup_lr=1e-5)
  assert c.logit_scale == 100.0 and c.prompt == "a photo of a {}."


@pytest.mark.parametrize("name,dataset,epochs", [
    ("chestx", "chestx", 125), ("isic", "isic2018", 250),
    ("eurosat", "eurosat", 250), ("cropdisease", "crop_disease", 250)])
def test_target_configs(name, dataset, epochs):
  c = load(name)
  assert c.dataset.name == dataset and c.epochs == epochs
  r = config_lib.resolve(c, num_devices=1)
  assert (r.episodes, r.steps) == (800, epochs)
  c.shot = 5
  r = config_lib.resolve(c, num_devices=1)
  assert (r.episodes, r.steps) == (400, 5 * epochs)
  c.episodes, c.steps = 7, 3
  r = config_lib.resolve(c, num_devices=1)
  assert (r.episodes, r.steps) == (7, 3)
  engine = config_lib.engine_config(r)
  assert engine.lora.scaling == 2.0 and engine.method.variant == "svl_ra"


def test_demo_config():
  c = load("demo")
  assert c.demo and c.model.init == "tiny-clip" and not c.model.checkpoint
  assert c.dataset.name == "synthetic" and c.dataset.prepare_synthetic
  config_lib.validate(c)


def test_episodes_per_batch_rounds_up_to_devices():
  c = load("demo")
  for epb, devices, expected in [(1, 4, 4), (6, 4, 8), (8, 4, 8), (3, 1, 3)]:
    c.episodes_per_batch = epb
    assert config_lib.resolve(c, num_devices=devices).episodes_per_batch == (
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
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(ml_collections.ConfigDict(d))
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
  # The dataclasses' own messages name the key.
  _bad("lora.blocks", "top", "lora.blocks", "'top'")
  _bad("lora.targets", ("q", "x"), "lora.targets", "'x'")
  _bad("optim.lr", -1.0, "optim.lr")
  _bad("optim.b1", 1.0, "optim.b1")
  _bad("method.timing", "end")
  _bad("method.relation_form", "kl")
  _bad("shot", 0, "'shot'", ">= 1")
  _bad("episodes", 0, "'episodes'")
  _bad("lora.dropout", 1.0, "lora.dropout", "1.0")
  _bad("model.checkpoint", "/x", "model.checkpoint", "model.init")
  _bad("prompt", "a photo")
  _bad("dataset.name", "imagenet")
  _bad("model.init", "clip-vit-b15")
  d = load("demo")
  d.eval_only = d.restart = True
  with pytest.raises(config_lib.ConfigError, match="eval_only"):
    config_lib.validate(d)


def test_lora_targets_and_blocks_parsing():
  c = load("demo")
  c.lora.targets = ("q,v",)
  c.lora.blocks = "0,1"
  engine = config_lib.engine_config(config_lib.resolve(c, num_devices=1))
  assert engine.lora.targets == ("q", "v") and engine.lora.blocks == (0, 1)


def _listing(folder):
  return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file()
                 else None) for p in folder.rglob("*"))


def test_rejected_checkpoint_leaves_the_workdir_as_found(tmp_path):
  """A nonexistent model.checkpoint (or model.tokenizer) is refused before
  the CLI or runner.run writes anything (log.txt, config.json, jax_cache):
  a new workdir is not created, an existing one keeps exactly its files."""
  work = tmp_path / "w"
  work.mkdir()
  (work / "notes.txt").write_text("mine")
  (work / "config.json").write_text("{}")
  before = _listing(work)
  p = _cli("--config", "configs/episodic/isic.py",
           f"--config.model.checkpoint={tmp_path}/nothing",
           "--workdir", str(work))
  assert p.returncode == 1 and "ERROR: model.checkpoint" in p.stderr
  assert "Traceback" not in p.stderr
  assert _listing(work) == before
  new = tmp_path / "new"
  p = _cli("--config", "configs/episodic/isic.py",
           f"--config.model.checkpoint={tmp_path}/nothing",
           "--workdir", str(new))
  assert p.returncode == 1 and not new.exists()
  c = load("isic")
  c.model.checkpoint = str(tmp_path / "nothing")
  with pytest.raises(config_lib.MissingInputError):
    runner.run(c, work)
  assert _listing(work) == before
  (tmp_path / "empty").mkdir()
  c.model.checkpoint = str(tmp_path / "empty")
  c.model.tokenizer = str(tmp_path / "no_tokenizer")
  with pytest.raises(config_lib.MissingInputError, match="model.tokenizer"):
    runner.run(c, new)
  assert not new.exists()


def test_missing_checkpoint(tmp_path):
  c = load("eurosat")
  c.model.checkpoint = str(tmp_path / "no_such_model")
  with pytest.raises(config_lib.MissingInputError) as e:
    runner.run(c, tmp_path / "work")
  msg = str(e.value)
  assert "no_such_model" in msg and "does not exist" in msg
  assert "huggingface.co/openai/clip-vit-base-patch16" in msg
  assert "huggingface-cli download" in msg


def test_dataset_not_prepared(tmp_path):
  c = load("eurosat")
  c.model.checkpoint, c.model.init = "", "tiny-clip"
  c.dataset.data_dir = str(tmp_path / "data")
  with pytest.raises(DatasetNotPreparedError) as e:
    runner.run(c, tmp_path / "work")
  msg = str(e.value)
  assert "python tools/prepare_data.py --dataset eurosat" in msg
  assert "EuroSAT" in msg and "zenodo" in msg


def test_synthetic_not_generated_unless_asked(tmp_path):
  c = load("demo")
  c.dataset.prepare_synthetic = False
  with pytest.raises(DatasetNotPreparedError, match="--dataset synthetic"):
    runner.run(c, tmp_path / "work")


def _saved_state(workdir, config):
  """A run state as a job would leave it after 4 episodes (no training)."""
  config = config_lib.resolve(config, num_devices=1)
  state = RunState(Path(workdir) / "state")
  state.save({"next_episode": 4, "fingerprint": config_lib.fingerprint(config),
              "config": config.to_dict()},
             {"index": np.arange(4), "stages": {"accuracy": np.zeros((4, 5))}})
  state.close()


def test_changed_config_is_refused_then_restart(tmp_path):
  work = tmp_path / "work"
  _saved_state(work, load("demo"))
  (work / "data").mkdir()
  changed = load("demo")
  changed.shot, changed.method.variant = 5, "none"
  with pytest.raises(config_lib.ResumeError) as e:
    runner.run(changed, work)
  msg = str(e.value)
  assert "shot: 1 -> 5" in msg and "method.variant: 'svl_ra' -> 'none'" in msg
  assert "--restart" in msg
  # Run-only keys may change on resume.
  same = load("demo")
  same.episodes_per_batch, same.episodes = 8, 1000
  assert runner.prepare_workdir(
      config_lib.resolve(same, num_devices=1), work, restart=False) is not None
  # restart discards the run but keeps other files (the demo's data).
  assert runner.prepare_workdir(
      config_lib.resolve(changed, num_devices=1), work, restart=True) is None
  assert not (work / "state").exists() and (work / "data").is_dir()


def _cli(*args, timeout=120, cwd=REPO):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(
      [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
  return subprocess.run([sys.executable, "-m", "jaxfsl.main", *args],
                        capture_output=True, text=True, timeout=timeout,
                        cwd=cwd, env=env)


def _one_error_line(p, status=2):
  assert p.returncode == status, (p.returncode, p.stderr[-3000:])
  assert "Traceback" not in p.stderr, p.stderr[-3000:]
  errors = [line for line in p.stderr.splitlines()
            if line.startswith("ERROR:")]
  assert len(errors) == 1, p.stderr
  return errors[0]


def test_renamed_keys_name_their_new_key():
  assert config_lib.RENAMED_KEYS == {
      "method.stage1_fraction": "method.window_fraction",
      "skip_clean_pass_in_stage2": "skip_clean_pass_outside_window"}
  for old, new in config_lib.RENAMED_KEYS.items():
    assert new in config_lib.flatten(config_lib.default_config())
    d = load("demo")
    section, _, name = old.rpartition(".")
    (d[section] if section else d)[name] = 0.5  # An old config file.
    with pytest.raises(config_lib.ConfigError) as e:
      config_lib.validate(d)
    assert f"{old!r} was renamed to {new!r}" in str(e.value)
    assert "unknown" not in str(e.value)  # Said once, as a rename.


def test_workdir_saved_under_old_key_names_resumes(tmp_path):
  """A run state whose fingerprint predates the rename is the same config."""
  c = config_lib.resolve(load("demo"), num_devices=1)
  fp = config_lib.fingerprint(c)
  old = {({v: k for k, v in config_lib.RENAMED_KEYS.items()}).get(k, k): v
         for k, v in fp.items()}
  assert "method.stage1_fraction" in old and "method.window_fraction" not in old
  assert config_lib.config_diff(old, fp) == []
  changed = dict(old, **{"method.stage1_fraction": 0.4})
  assert config_lib.config_diff(changed, fp) == [
      "method.window_fraction: 0.4 -> 0.6"]
  work = tmp_path / "work"
  state = RunState(work / "state")
  state.save({"next_episode": 4, "fingerprint": old, "config": c.to_dict()},
             {"index": np.arange(4), "stages": {"accuracy": np.zeros((4, 5))}})
  state.close()
  assert runner.prepare_workdir(c, work, restart=False) is not None


def test_cli_renamed_override_key(tmp_path):
  line = _one_error_line(_cli("--config", "configs/episodic/demo.py",
                              "--config.skip_clean_pass_in_stage2=False",
                              "--workdir", str(tmp_path / "w")))
  assert ("'skip_clean_pass_in_stage2' was renamed to "
          "'skip_clean_pass_outside_window'") in line
  assert "--config.skip_clean_pass_outside_window=VALUE" in line
  assert not (tmp_path / "w").exists()


def test_cli_unknown_override_key(tmp_path):
  p = _cli("--config", "configs/episodic/demo.py",
           "--config.method.svl_weight=1", "--workdir", str(tmp_path))
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


def test_every_problem_is_listed_at_once():
  d = load("demo")
  d.shot, d.query, d.method.variant, d.lora.rank = 0, 0, "svl+ra", 0
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(d)
  msg = str(e.value)
  for fragment in ("'shot'", "'query'", "method.variant", "lora.rank"):
    assert fragment in msg, msg


def test_protocol_trainable_and_seeds():
  _bad("protocol", "nope", "'protocol'", "episodic")
  _bad("trainable", "prefix", "'trainable'", "lora", "coop", "maple")
  d = load("demo")
  d.trainable, d.maple.depth = "maple", 0
  with pytest.raises(config_lib.ConfigError, match="maple.depth"):
    config_lib.validate(d)
  d.trainable, d.maple.depth = "coop", 0  # Other blocks are not read.
  config_lib.validate(d)
  assert config_lib.engine_config(d).trainable_config["n_ctx"] == 16
  _bad("seeds", "1,x", "'seeds'", "'x'")
  _bad("seeds", "1,1", "'seeds'", "repeated")


def test_config_dump_says_which_key_sets_t():
  c = load("eurosat")
  assert "set by 'epochs'" in config_lib.t_source(c) and "250" in (
      config_lib.t_source(c))
  c.steps = 22
  assert config_lib.t_source(c).startswith("T = 22 steps, set by 'steps'")


def test_paths_config_names_resolve_from_anywhere(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for name in ("configs/episodic/isic.py", "episodic/isic.py"):
    assert config_lib.find_config(name) == (
        CONFIGS / "episodic" / "isic.py").resolve()
  assert config_lib.load_config("episodic/isic.py").dataset.name == "isic2018"
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.find_config("configs/nope.py")
  assert "configs/nope.py" in str(e.value)
  assert "episodic/demo.py" in str(e.value)  # The shipped configs listed.


def test_paths_tilde_in_path_keys(tmp_path, monkeypatch):
  """``~`` in every path key is expanded (the shell does not after ``=``)."""
  monkeypatch.setenv("HOME", str(tmp_path))
  from jaxfsl.protocols.episodic import inputs

  c = load("eurosat")
  c.model.checkpoint = "~/no_such_model"
  with pytest.raises(config_lib.MissingInputError) as e:
    inputs.checkpoint_path(c)
  assert str(tmp_path / "no_such_model") in str(e.value)
  (tmp_path / "model").mkdir()
  c.model.checkpoint = "~/model"
  assert inputs.checkpoint_path(c) == tmp_path / "model"
  c.dataset.data_dir = "~/data/{workdir}"
  assert inputs.data_dir(c, "w") == tmp_path / "data" / "w"
  assert set(config_lib.PATH_KEYS) <= set(config_lib.flatten(c))


def test_episode_shape_checked_before_any_data():
  """way / shot + query the dataset cannot give, known from the config."""
  _bad("way", 11, "'way' is 11", "num_classes=10", "way <= 10")
  _bad("query", 100, "1 + 100 = 101", "images_per_class=40",
       "shot + query <= 40")
  d = load("isic")
  d.way = 8
  with pytest.raises(config_lib.ConfigError, match=r"'way' is 8; dataset "
                     r"'isic2018' has 7 classes: expected way <= 7"):
    config_lib.validate(d)
  d.way = 7  # As many as there are: fine.
  config_lib.validate(d)


def test_each_problem_is_reported_once():
  """The job-level check of way/shot/query/steps/epochs, not the engine's
  looser one again."""
  for key, value in (("way", 0), ("shot", 0), ("query", 0), ("steps", 0),
                     ("epochs", 0)):
    d = load("demo")
    d[key] = value
    d.steps = -1 if key == "epochs" else d.steps  # epochs then sets T.
    with pytest.raises(config_lib.ConfigError) as e:
      config_lib.validate(d)
    lines = str(e.value).splitlines()
    assert lines == [line for line in lines if f"'{key}'" in line], lines
    assert len(lines) == 1, lines
  # The engine's own checks still run in the same pass.
  d = load("demo")
  d.shot, d.logit_scale, d.lora.rank = 0, -1.0, 0
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(d)
  msg = str(e.value)
  assert "'shot' is 0" in msg and "lora.rank 0" in msg
  assert "logit_scale -1.0: expected a finite number > 0" in msg
  assert "shot 0" not in msg


def test_cli_episode_shape_refused_before_generating_data(tmp_path):
  for flag, fragment in (("--config.way=11", "way <= 10"),
                         ("--config.query=100", "shot + query <= 40")):
    work = tmp_path / flag.split(".")[1].split("=")[0]
    line = _one_error_line(_cli("--config", "configs/episodic/demo.py",
                                flag, "--workdir", str(work)))
    assert fragment in line and line.count(fragment) == 1, line
    assert not work.exists()  # Nothing generated, nothing written.


def test_small_classes_error_names_the_command_line_switch(tmp_path):
  from jaxfsl.protocols.episodic import inputs

  c = load("demo")
  c.dataset.data_dir = str(tmp_path / "data")
  c.dataset.synthetic.images_per_class = 6
  c.dataset.synthetic.num_classes = 5
  dataset = inputs.open_dataset(c, tmp_path)
  with pytest.raises(config_lib.ConfigError) as e:
    inputs.make_sampler(c, dataset, 32)
  # Said once (the sampler's message already names it).
  assert str(e.value).count("--config.dataset.exclude_small_classes=True") == 1


def test_clean_exit_missing_config_file_creates_nothing(tmp_path):
  work = tmp_path / "w"
  line = _one_error_line(_cli("--config", "configs/nope.py",
                              "--workdir", str(work)))
  assert "configs/nope.py" in line and "not found" in line
  assert not work.exists()


def test_clean_exit_bad_config_value_creates_nothing(tmp_path):
  work = tmp_path / "w"
  p = _cli("--config", "configs/episodic/demo.py", "--config.shot=0",
           "--config.method.variant=x", "--workdir", str(work))
  assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
  assert "'shot'" in p.stderr and "method.variant" in p.stderr
  assert not work.exists()


@pytest.mark.parametrize("flags,expected", [
    (("--config.trainable=coop", "--config.coop.n_ctx=40"),
     "ERROR: coop.n_ctx=40 does not fit in the model's text context of 32 "
     "tokens with a class name (at most 29)"),
    (("--config.trainable=coop", "--config.coop.ctx_init=" + " ".join(
        ["a photo"] * 20)),
     "tokenises to 30 tokens (or more: truncated), which leaves no room for "
     "a class name in the model's text context of 32 tokens; expected at "
     "most 29 tokens"),
    (("--config.trainable=maple", "--config.maple.depth=2",
      "--config.maple.n_ctx=6"),
     "ERROR: maple.n_ctx=6 exceeds the 4 tokens of maple.ctx_init='a photo "
     "of a'"),
], ids=["coop_n_ctx", "coop_ctx_init", "maple_n_ctx"])
def test_clean_exit_prompt_settings_that_do_not_fit_create_nothing(
    tmp_path, flags, expected):
  # A random-init model's tokenizer is known unbuilt: settings it cannot
  # take were refused only after config.json, data/ and jax_cache/ were
  # written (and a too-long ctx_init not at all: every class name was
  # truncated away).
  work = tmp_path / "w"
  line = _one_error_line(_cli("--config", "configs/episodic/demo.py",
                              "--config.model.init=pe-core-tiny", *flags,
                              "--workdir", str(work)))
  assert expected in line
  assert not work.exists()


def test_prompt_learner_that_would_cut_class_names_is_refused(tmp_path):
  # pe-core-tiny's 32-token context: with 27 context vectors the prompts of
  # 'cyan checkerboard' and 'orange striped square' were cut (with 29 every
  # name kept one token, and 'green square' / 'green circle' shared a
  # prompt), silently.
  p = _cli("--config", "configs/episodic/demo.py",
           "--config.model.init=pe-core-tiny", "--config.trainable=coop",
           "--config.coop.n_ctx=27", "--config.episodes=1",
           "--workdir", str(tmp_path / "w"))
  line = _one_error_line(p, status=1)
  assert line == (
      "ERROR: coop.n_ctx=27 leaves too little room in the model's text "
      "context (32 tokens) for the class names ['cyan checkerboard', "
      "'orange striped square'] (2 of 10 classes): their prompts would be "
      "cut; expected coop.n_ctx <= 24 (model random-init pe-core-tiny)")
  assert not (tmp_path / "w" / "state").exists()


def test_clean_exit_unknown_protocol(tmp_path):
  line = _one_error_line(_cli("--config", "configs/episodic/demo.py",
                              "--config.protocol=nope",
                              "--workdir", str(tmp_path / "w")))
  assert "'protocol' is 'nope'" in line and "'episodic'" in line
  assert not (tmp_path / "w").exists()


def test_clean_exit_workdir_is_a_file(tmp_path):
  work = tmp_path / "file"
  work.write_text("x")
  line = _one_error_line(_cli("--config", "configs/episodic/demo.py",
                              "--workdir", str(work)))
  assert str(work) in line and "existing file" in line
  assert work.read_text() == "x"


def test_clean_exit_read_only_workdir(tmp_path):
  if os.geteuid() == 0:
    # root writes through file modes: take a folder no one can write to.
    work = Path("/sys/kernel")
    assert work.is_dir()
  else:
    work = tmp_path / "ro"
    work.mkdir()
    work.chmod(0o555)
  line = _one_error_line(_cli("--config", "configs/episodic/demo.py",
                              "--workdir", str(work)))
  assert str(work) in line and "not writable" in line
  assert not (work / "log.txt").exists()


def test_paths_relative_config_from_another_directory(tmp_path):
  """A config name works from any directory (found among the shipped
  configs): the run gets as far as the missing checkpoint."""
  p = _cli("--config", "configs/episodic/isic.py",
           f"--config.model.checkpoint={tmp_path}/nothing",
           "--workdir", str(tmp_path / "w"), cwd=tmp_path)
  assert p.returncode == 1, p.stderr[-2000:]
  assert "ERROR: model.checkpoint" in p.stderr
  p = _cli("--config", "episodic/isic.py", "--help", cwd=tmp_path)
  assert p.returncode == 0 and "dataset.name = 'isic2018'" in p.stdout


def test_paths_tilde_after_equals_in_workdir_and_keys(tmp_path):
  env_home = tmp_path / "home"
  (env_home / "empty").mkdir(parents=True)
  env = dict(os.environ, JAX_PLATFORMS="cpu", HOME=str(env_home))
  env["PYTHONPATH"] = str(REPO)
  p = subprocess.run(
      [sys.executable, "-m", "jaxfsl.main", "--config=episodic/isic.py",
       "--config.model.checkpoint=~/nothing", "--workdir=~/w"],
      capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
  assert p.returncode == 1, p.stderr[-2000:]
  assert str(env_home / "nothing") in p.stderr
  # A missing checkpoint is refused before the workdir is created.
  assert not (env_home / "w").exists()
  # An existing (empty) checkpoint folder passes the path check: the job
  # (stopped by the unprepared dataset) logs into the expanded workdir.
  p = subprocess.run(
      [sys.executable, "-m", "jaxfsl.main", "--config=episodic/isic.py",
       "--config.model.checkpoint=~/empty", "--workdir=~/w"],
      capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
  assert p.returncode == 1, p.stderr[-2000:]
  assert (env_home / "w" / "log.txt").is_file()
  assert not (tmp_path / "~").exists()


def test_cli_help_exits_0_and_lists_keys_with_comments():
  p = _cli("--help")
  assert p.returncode == 0, p.stderr
  assert "--workdir" in p.stdout and "method.variant = 'svl_ra'" in p.stdout
  p = _cli("--config", "configs/episodic/chestx.py", "--help")
  assert p.returncode == 0, p.stderr
  out = p.stdout
  assert "epochs = 125  (default 250)" in out
  # base.py's comments, under their keys.
  assert "Classes per episode." in out
  assert "RA (L_ra)." in out
  assert "sets T directly" in out


def test_console_script_is_declared():
  """setup.cfg declares ``jaxfsl-run`` -> jaxfsl.main:run (same flags)."""
  import configparser

  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  scripts = cfg["options.entry_points"]["console_scripts"]
  assert "jaxfsl-run = jaxfsl.main:run" in scripts
  from jaxfsl import main

  assert callable(main.run)


def test_cli_seeds_run_one_job_per_seed_folder(tmp_path):
  """--config.seeds=3,4: one sub-job per seed in WORKDIR/seed_<s> (here the
  first, its checkpoint path existing, stops at the unprepared dataset,
  after writing its config)."""
  work = tmp_path / "w"
  (tmp_path / "empty").mkdir()
  p = _cli("--config", "configs/episodic/isic.py", "--config.seeds=3,4",
           f"--config.model.checkpoint={tmp_path}/empty",
           "--workdir", str(work))
  assert p.returncode == 1 and "is not prepared" in p.stderr
  saved = json.loads((work / "seed_3" / "config.json").read_text())
  assert saved["seed"] == 3 and saved["seeds"] == ""  # One seed each.
  assert not (work / "seed_4").exists()


def test_cli_restart_flag_discards_another_configs_run(tmp_path):
  work = tmp_path / "w"
  other = load("isic")
  other.shot = 5
  _saved_state(work, other)
  (tmp_path / "empty").mkdir()  # Exists: the job gets past the check.
  args = ("--config", "configs/episodic/isic.py",
          f"--config.model.checkpoint={tmp_path}/empty", "--workdir",
          str(work))
  p = _cli(*args)
  assert p.returncode == 1 and "shot: 5 -> 1" in p.stderr, p.stderr[-2000:]
  assert (work / "state").is_dir()
  p = _cli(*args, "--restart")
  assert p.returncode == 1 and "is not prepared" in p.stderr
  assert not (work / "state").exists()


@pytest.mark.parametrize("variant,family,trainable,label", [
    ("svl_ra", "clip", "lora", "CLIP-LoRA + SVL + RA"),
    ("none", "pe_core", "lora", "PE-Core-LoRA"),
    ("svl_ra", "clip", "coop", "CoOp + RA (SVL inert)"),
    ("svl", "clip", "coop", "CoOp (SVL inert)"),
    ("svl_ra", "clip", "maple", "MaPLe + SVL + RA"),
    ("none", "clip", "maple", "MaPLe"),
    ("ra", "siglip", "coop", "SigLIP-CoOp + RA"),
])
def test_method_labels_name_backbone_and_trainable(variant, family,
                                                    trainable, label):
  assert runner.method_label(variant, family, trainable) == label


def test_method_label_does_not_claim_an_inert_svl():
  """SVL's L_ad has no gradient when the image tower is frozen (CoOp,
  text-only LoRA): the row is not labelled "+ SVL", results.json lists the
  inert term and the summary says so."""
  from _fake_results import fake_results

  from jaxfsl.io import markdown

  assert runner.inert_terms("svl_ra", tunes_vision=False) == ["anti_visual"]
  assert runner.inert_terms("svl_ra", tunes_vision=True) == []
  assert runner.inert_terms("ra", tunes_vision=False) == []
  assert runner.method_label("svl_ra", "clip", "lora", tunes_vision=False) == (
      "CLIP-LoRA + RA (SVL inert)")
  c = load("eurosat")
  c.method.variant, c.lora.towers = "svl_ra", "text"
  engine = config_lib.engine_config(config_lib.resolve(c, num_devices=1))
  assert engine.trainable_block.towers == "text"

  class _Model:
    name = "m"

    class config:  # noqa: N801 - stands in for a ModelConfig.
      family = "clip"

  info = runner.describe(c, _Model, engine)
  assert info["method"] == "CLIP-LoRA + RA (SVL inert)"
  assert info["inert_terms"] == ["anti_visual"]
  r = {**fake_results(), "method": info["method"], "trainable": "lora",
       "inert_terms": info["inert_terms"]}
  md = markdown.summary_markdown(r)
  assert "# CLIP-LoRA + RA (SVL inert) on" in md
  assert "SVL (L_ad) was inert" in md
  c.lora.towers = "vision"
  engine = config_lib.engine_config(config_lib.resolve(c, num_devices=1))
  info = runner.describe(c, _Model, engine)
  assert info["method"] == "CLIP-LoRA + SVL + RA"
  assert info["inert_terms"] == []
  assert "was inert" not in markdown.summary_markdown(fake_results())


BAD_CONFIG_FILES = {
    # name: (file text, what the ERROR line says)
    "syntax": ("import ml_collections\n\nx = = 1\n", "line 3: invalid syntax"),
    "no_get_config": ("x = 1\n", "defines no get_config()"),
    "raises": ("def get_config():\n  return {}['lr']\n",
               "get_config() raised KeyError: 'lr'"),
    "returns_int": ("def get_config():\n  return 3\n",
                    "get_config() must return an ml_collections.ConfigDict, "
                    "got int"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIG_FILES))
def test_bad_config_file_is_one_error_line(case, tmp_path):
  text, expected = BAD_CONFIG_FILES[case]
  file = tmp_path / f"{case}.py"
  file.write_text(text)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.load_config(file)
  assert str(file) in str(e.value) and expected in str(e.value)
  work = tmp_path / "w"
  line = _one_error_line(_cli("--config", str(file), "--workdir", str(work)))
  assert str(file) in line and expected in line, line
  assert not work.exists()


def test_cli_non_python_config_file_is_one_error_line(tmp_path):
  """``--config README.md``: read as Python, its first bad line named."""
  work = tmp_path / "w"
  line = _one_error_line(_cli("--config", "README.md", "--workdir",
                              str(work)))
  assert "README.md: line " in line and "get_config()" in line, line
  assert not work.exists()


def test_inert_keys_of_another_trainable():
  """Keys of a trainable's block set away from their defaults while another
  trainable is chosen are listed (the runner warns about them)."""
  c = load("demo")
  assert config_lib.inert_keys(c) == []
  c.trainable = "coop"
  c.lora.rank = 4
  c.coop.n_ctx = 4  # Read by coop: not inert.
  assert config_lib.inert_keys(c) == ["lora.rank=4"]
  c = load("demo")
  c.trainable = "lora"
  c.maple.depth = 3
  c.lora.rank = 4  # Read by lora: not inert.
  assert config_lib.inert_keys(c) == ["maple.depth=3"]


def test_load_model_builds_the_preset_model_config(monkeypatch):
  """inputs.load_model's random-init architecture is trainable_checks'
  preset_model_config (one implementation of the model.* overrides)."""
  from jaxfsl.configs.base import get_config
  from jaxfsl.protocols.episodic import inputs, trainable_checks

  c = get_config()
  c.model.checkpoint, c.model.init = "", "tiny-clip"
  c.model.image_size, c.model.vision_depth = 32, 1
  expected = trainable_checks.preset_model_config(c.model)
  assert expected.vision.image_size == 32 and expected.vision.depth == 1
  calls = []
  real = trainable_checks.preset_model_config

  def spy(model, strict=False):
    calls.append(strict)
    return real(model, strict=strict)

  monkeypatch.setattr(trainable_checks, "preset_model_config", spy)
  model = inputs.load_model(c)
  assert calls == [True]
  assert model.config == expected and model.name == "random-init tiny-clip"
  c.model.image_size = 33  # Not a multiple of the patch.
  assert real(c.model) is None
  with pytest.raises(config_lib.ConfigError, match="model.image_size"):
    inputs.load_model(c)
