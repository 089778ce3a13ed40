"""Adapters leaving jaxfsl and coming back: PEFT folders, the release's
save_lora ``.pt``, npz + sidecar, the export tool, and multi-seed jobs.

The PEFT cases build a small random transformers CLIPModel / SiglipModel,
save it, load it with ``jaxfsl.load_model``, fine-tune LoRA on both towers
for a few steps with ``EpisodeEngine``, export, and load the folder with
``peft.PeftModel.from_pretrained`` onto the same saved weights: the adapted
features must agree to 1e-4 after L2 normalisation (and differ from the
un-adapted ones, so the comparison can fail).
"""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import _reference as ref
import jax
import numpy as np
import peft
import pytest
import torch
import transformers

import jaxfsl
from jaxfsl import interop
from jaxfsl.interop import npz as npz_format
from jaxfsl.interop import release as release_format
from jaxfsl.interop import workdir as saved_workdir
from jaxfsl.protocols.episodic import seeds as seeds_mod
from jaxfsl.protocols.episodic.engine import (
  EngineConfig,
  EpisodeEngine,
  MethodConfig,
  OptimConfig,
  episode_keys,
)
from jaxfsl.trainables import Adapters, LoraConfig, init_lora

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4
WAY = 2


def _hf_model(family):
  if family == "clip":
    return ref.hf_clip(vision_width=48, vision_heads=4, vision_depth=2,
                       patch=16, image=32, text_width=32, text_heads=2,
                       text_depth=2, eos_token_id=99, seed=3)
  return ref.hf_siglip(width=48, heads=4, depth=2, patch=16, image=32,
                       text_width=32, text_heads=2, text_depth=2, seed=3)


def _ids(family, n):
  if family == "clip":
    return ref.clip_ids(n, 16, 100, eos=99, pad=99, bos=98, seed=5)
  return ref.siglip_ids(n, 16, 100, seed=5)


def _train(model, family, lora):
  """A few EpisodeEngine steps on one random episode; the final adapters."""
  config = EngineConfig(way=WAY, shot=1, query=2, steps=3, lora=lora,
                        optim=OptimConfig(lr=1e-2),
                        method=MethodConfig(variant="none"))
  engine = EpisodeEngine(model, config)
  rng = np.random.default_rng(0)
  s = model.config.vision.image_size

  def images(*shape):
    return rng.integers(0, 256, shape + (s, s, 3), dtype=np.uint8)

  batch = dict(
      support_views=images(1, config.num_views, WAY), support=images(1, WAY),
      support_labels=np.arange(WAY, dtype=np.int32)[None],
      query=images(1, 2 * WAY),
      query_labels=np.repeat(np.arange(WAY), 2).astype(np.int32)[None],
      text_ids=_ids(family, WAY).astype(np.int32)[None])
  out = engine.run_batch(batch, episode_keys(0, [0]), return_adapters=True)
  tree = jax.tree.map(lambda a: np.asarray(a)[0], out["adapters"])
  return Adapters(params=tree, config=lora)


@pytest.fixture(scope="module", params=["clip", "siglip"])
def trained(request, tmp_path_factory):
  """(family, HF folder, jaxfsl model, trained adapters on both towers)."""
  family = request.param
  folder = tmp_path_factory.mktemp(family) / "hf"
  ref.write_hf(_hf_model(family), folder)
  model = jaxfsl.load_model(str(folder))
  lora = LoraConfig(rank=4, alpha=8.0, dropout=0.25,
                    targets=("q", "k", "v", "o"), towers="both")
  adapters = _train(model, family, lora)
  b = adapters.params["img"]["blocks_0"]["attn"]["q"]["b"]
  assert np.abs(b).max() > 1e-4, "training did not move the adapters"
  return family, folder, model, adapters


def _hf_class(family):
  return {"clip": transformers.CLIPModel,
          "siglip": transformers.SiglipModel}[family]


def test_peft_round_trip_features(trained, tmp_path):
  family, folder, model, adapters = trained
  out = interop.export_adapters(adapters, tmp_path / "peft", "peft",
                                model=model,
                                base_model_name_or_path=str(folder))
  cfg = json.loads((out / "adapter_config.json").read_text())
  # The faithful encoding: PEFT's rsLoRA scaling alpha / sqrt(r) is ours.
  assert (cfg["r"], cfg["lora_alpha"], cfg["use_rslora"]) == (4, 8, True)

  base = _hf_class(family).from_pretrained(str(folder)).eval()
  tuned = peft.PeftModel.from_pretrained(base, str(out)).eval()
  layer = tuned.base_model.model.vision_model.encoder.layers[1].self_attn
  assert math.isclose(layer.q_proj.scaling["default"], adapters.config.scaling)
  # Exactly the tuned projections are LoRA layers (nothing else matched).
  lora_modules = {n for n, m in tuned.named_modules()
                  if isinstance(m, peft.tuners.lora.LoraLayer)}
  assert len(lora_modules) == 2 * 2 * 4

  pixels = ref.random_pixels(3, model.config.vision.image_size, seed=7)
  ids = _ids(family, 4)
  ours_img = model.encode_image(pixels, lora=adapters)
  ours_txt = model.encode_text(ids, lora=adapters)
  img = ref.max_normalized_diff(ours_img, ref.hf_image_features(tuned, pixels))
  txt = ref.max_normalized_diff(ours_txt, ref.hf_text_features(tuned, ids))
  print(f"\n{family} PEFT round trip: image {img:.2e} text {txt:.2e}")
  assert img <= TOL and txt <= TOL
  # The adapters matter: the frozen backbone's features are elsewhere.
  assert ref.max_normalized_diff(ours_img, model.encode_image(pixels)) > 1e-3
  assert ref.max_normalized_diff(ours_txt, model.encode_text(ids)) > 1e-3

  back = interop.import_adapters(out, model)
  assert back.config == adapters.config
  jax.tree.map(np.testing.assert_array_equal, back.params, adapters.params)


def test_peft_import_of_peft_written_folder(trained, tmp_path):
  """A folder PEFT itself wrote (plain alpha / r scaling, q and v of the
  vision tower only) imports with the same effect."""
  family, folder, model, _ = trained
  base = _hf_class(family).from_pretrained(str(folder)).eval()
  cfg = peft.LoraConfig(r=4, lora_alpha=6, use_rslora=False,
                        target_modules=r"vision_model\.encoder\.layers\.\d+"
                        r"\.self_attn\.(q_proj|v_proj)")
  tuned = peft.get_peft_model(base, cfg).eval()
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in tuned.named_parameters():
      if "lora_" in name:
        p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
  tuned.save_pretrained(str(tmp_path / "theirs"))

  adapters = interop.import_adapters(tmp_path / "theirs", model)
  assert adapters.config.towers == "vision"
  assert adapters.config.targets == ("q", "v")
  assert adapters.config.blocks == "all"
  # alpha / r = 6 / 4 expressed as alpha' / sqrt(r).
  assert math.isclose(adapters.config.scaling, 6 / 4)
  pixels = ref.random_pixels(2, model.config.vision.image_size, seed=8)
  diff = ref.max_normalized_diff(model.encode_image(pixels, lora=adapters),
                                 ref.hf_image_features(tuned, pixels))
  assert diff <= TOL


def test_peft_targets_exactly_the_tuned_blocks(tmp_path):
  """Towers of different depths with a preset ("half-up": vision block 1 of
  2, text blocks 1-2 of 3) and targets q, o: PEFT adapts exactly those
  modules and the features agree."""
  hf = ref.hf_clip(vision_width=48, vision_heads=4, vision_depth=2,
                   text_width=32, text_heads=2, text_depth=3, seed=4)
  ref.write_hf(hf, tmp_path / "hf")
  model = jaxfsl.load_model(str(tmp_path / "hf"))
  adapters = _random_adapters(model, towers="both", targets=("q", "o"),
                              blocks="half-up")
  out = interop.export_adapters(adapters, tmp_path / "peft", "peft",
                                model=model)
  tuned = peft.PeftModel.from_pretrained(
      transformers.CLIPModel.from_pretrained(str(tmp_path / "hf")).eval(),
      str(out)).eval()
  got = {n.removeprefix("base_model.model.") for n, m in tuned.named_modules()
         if isinstance(m, peft.tuners.lora.LoraLayer)}
  want = {f"{tower}.encoder.layers.{i}.self_attn.{p}"
          for tower, blocks in (("vision_model", (1,)),
                                ("text_model", (1, 2)))
          for i in blocks for p in ("q_proj", "out_proj")}
  assert got == want
  pixels = ref.random_pixels(2, 32, seed=9)
  ids = _ids("clip", 3)
  assert ref.max_normalized_diff(model.encode_image(pixels, lora=adapters),
                                 ref.hf_image_features(tuned, pixels)) <= TOL
  assert ref.max_normalized_diff(model.encode_text(ids, lora=adapters),
                                 ref.hf_text_features(tuned, ids)) <= TOL
  back = interop.import_adapters(out, model)
  assert back.config == adapters.config


def _state_from_facts(adapters, position):
  """The release's save_lora dict as its public code defines it, built
  here independently: apply_lora lists the text tower's tuned blocks, then
  the vision tower's (ascending); layer_<j> is that list's j-th module;
  target o is ``proj``; w_lora_A [r, W] and w_lora_B [W, r] with the
  LinearLoRA delta x (B A)^T alpha / sqrt(r)."""
  names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}
  c = adapters.config
  layers = []
  for tower in ("txt", "img"):
    blocks = adapters.params.get(tower, {})
    for name in sorted(blocks, key=lambda n: int(n.split("_")[1])):
      attn = blocks[name]["attn"]
      layers.append({names[t]: {"w_lora_A": attn[t]["a"].T,
                                "w_lora_B": attn[t]["b"].T}
                     for t in c.targets})
  return {"weights": {f"layer_{j}": layer for j, layer in enumerate(layers)},
          "metadata": {"r": c.rank, "alpha": int(c.alpha),
                       "encoder": c.towers, "params": list(c.targets),
                       "position": position}}


def test_release_file_layout_and_round_trip(trained, tmp_path):
  family, _, model, adapters = trained
  path = interop.export_adapters(adapters, tmp_path / "lora_weights.pt",
                                 "release", model=model)
  state = torch.load(str(path), weights_only=True)
  expected = _state_from_facts(adapters, "all")
  meta = dict(state["metadata"])
  assert meta.pop("dropout_rate") == adapters.config.dropout
  assert meta == expected["metadata"]
  assert list(state["weights"]) == list(expected["weights"])
  for layer, projs in expected["weights"].items():
    assert set(state["weights"][layer]) == set(projs)
    for proj, ab in projs.items():
      for key, value in ab.items():
        tensor = state["weights"][layer][proj][key]
        assert tensor.dtype == torch.float32
        np.testing.assert_array_equal(tensor.numpy(), value,
                                      err_msg=f"{layer}/{proj}/{key}")
  # layer_0 is the text tower's first block: the release's orientation
  # gives the delta jaxfsl applies there.
  x = np.random.default_rng(0).normal(size=(3, model.config.text.width))
  a_t = state["weights"]["layer_0"]["q_proj"]["w_lora_A"].double().numpy()
  b_t = state["weights"]["layer_0"]["q_proj"]["w_lora_B"].double().numpy()
  theirs = x @ (b_t @ a_t).T * meta["alpha"] / math.sqrt(meta["r"])
  ab = adapters.params["txt"]["blocks_0"]["attn"]["q"]
  ours = x @ ab["a"] @ ab["b"] * adapters.config.scaling
  np.testing.assert_allclose(theirs, ours, rtol=1e-6, atol=1e-9)

  back = interop.import_adapters(path, model)
  assert back.config == adapters.config
  jax.tree.map(np.testing.assert_array_equal, back.params, adapters.params)
  # The dict built from the public facts imports to the same adapters.
  from_facts = release_format.adapters_from_state(
      expected, {"img": model.config.vision.depth,
                 "txt": model.config.text.depth}, "facts")
  jax.tree.map(np.testing.assert_array_equal, from_facts.params,
               adapters.params)


def test_npz_round_trip_and_fingerprint(trained, tmp_path):
  family, folder, model, adapters = trained
  npz_path = interop.export_adapters(adapters, tmp_path / "ep0", "npz",
                                     model=model)
  sidecar = json.loads(npz_path.with_suffix(".json").read_text())
  assert sidecar["kind"] == "lora"
  lora = sidecar["lora"]
  assert (lora["rank"], lora["alpha"], lora["targets"], lora["towers"],
          lora["blocks"]) == (4, 8.0, ["q", "k", "v", "o"], "both", "all")
  assert sidecar["backbone"]["family"] == family
  assert sidecar["backbone"]["sha256"] == interop.backbone_fingerprint(
      jaxfsl.load_model(str(folder)))["sha256"]
  assert "img/blocks_1/attn/o/b" in sidecar["leaves"]

  back = interop.import_adapters(npz_path, model)
  assert back.config == adapters.config
  jax.tree.map(np.testing.assert_array_equal, back.params, adapters.params)

  # Another backbone (one weight changed) is refused, naming both hashes.
  other = jaxfsl.load_model(str(folder))
  other.params["img"]["ln_post"]["bias"] = (
      np.asarray(other.params["img"]["ln_post"]["bias"]) + 1.0)
  with pytest.raises(interop.InteropError, match="sha256"):
    interop.import_adapters(npz_path, other)


def test_npz_generic_tree(tmp_path):
  """Any str-keyed tree (e.g. a prompt learner's) round-trips with dtypes."""
  tree = {"ctx": np.arange(6, dtype=np.float32).reshape(2, 3),
          "deep": {"layer_0": np.ones((2,), np.float16),
                   "step": np.asarray(3, np.int32)}}
  npz_path, json_path = npz_format.save_tree(
      tmp_path / "prompts", tree, kind="coop", metadata={"n_ctx": 2})
  back, sidecar = npz_format.load_tree(npz_path)
  assert sidecar["kind"] == "coop" and sidecar["n_ctx"] == 2
  jax.tree.map(np.testing.assert_array_equal, back, tree)
  assert back["deep"]["layer_0"].dtype == np.float16
  with pytest.raises(interop.InteropError, match="only 'lora'"):
    interop.import_adapters(npz_path, _tiny_model())
  with pytest.raises(interop.InteropError, match=r"'a/b'.*'x'|keys must"):
    npz_format.save_tree(tmp_path / "bad", {"a/b": np.zeros(1), "x": {}},
                         kind="coop")


def _tiny_model():
  from jaxfsl.models.config import clip_config

  return jaxfsl.build(clip_config(
      vision_width=32, vision_depth=2, vision_heads=2, patch_size=16,
      image_size=32, text_width=32, text_depth=2, text_heads=2, embed_dim=16,
      vocab_size=300, context_length=16), seed=0)


def _random_adapters(model, **kw):
  lora = LoraConfig(rank=2, alpha=4.0, **kw)
  adapters = init_lora(jax.random.PRNGKey(0), model.params, lora)
  gen = np.random.default_rng(1)
  return adapters.replace(params=jax.tree.map(
      lambda x: np.asarray(x) + gen.normal(size=x.shape).astype(np.float32),
      adapters.params))


def test_release_positions_and_errors(tmp_path):
  model = _tiny_model()
  depths = {"img": 2, "txt": 2}
  # Explicit blocks: the release needs a position name.
  adapters = _random_adapters(model, blocks=(1,), towers="text")
  with pytest.raises(interop.InteropError, match="pass position="):
    release_format.release_state(adapters)
  state = release_format.release_state(adapters, position="top1",
                                       model=model)
  assert state["metadata"]["position"] == "top1"
  back = release_format.adapters_from_state(state, depths, "top1.pt")
  # Block 1 of 2 is the "half-up" preset: the importer names presets.
  assert back.config.towers == "text" and back.config.blocks == "half-up"
  jax.tree.map(np.testing.assert_array_equal, back.params, adapters.params)
  # A position that does not give the tuned blocks is refused.
  with pytest.raises(interop.InteropError, match="does not match"):
    release_format.release_state(adapters, position="all", model=model)

  # Errors name the file and every bad key.
  state = release_format.release_state(_random_adapters(model))
  broken = {"metadata": dict(state["metadata"]),
            "weights": {k: dict(v) for k, v in state["weights"].items()}}
  broken["weights"]["layer_0"]["q_proj"] = {
      "w_lora_A": np.zeros((3, 32)), "w_lora_B": np.zeros((32, 3))}
  del broken["weights"]["layer_1"]["v_proj"]
  with pytest.raises(interop.InteropError) as e:
    release_format.adapters_from_state(broken, depths, "x.pt")
  msg = str(e.value)
  assert "x.pt" in msg and "layer_0/q_proj" in msg and "layer_1/v_proj" in msg
  broken["weights"]["layer_2"] = {}
  with pytest.raises(interop.InteropError, match="unexpected.*layer_2"):
    release_format.adapters_from_state(broken, depths, "x.pt")


def test_import_errors(tmp_path):
  model = _tiny_model()
  adapters = _random_adapters(model, towers="both")
  folder = interop.export_adapters(adapters, tmp_path / "p", "peft")
  from safetensors.numpy import load_file, save_file

  tensors = load_file(str(folder / "adapter_model.safetensors"))
  tensors["base_model.model.vision_model.encoder.layers.0.mlp.fc1.lora_A."
          "weight"] = np.zeros((2, 32), np.float32)
  del tensors["base_model.model.text_model.encoder.layers.1.self_attn."
              "k_proj.lora_B.weight"]
  save_file(tensors, str(folder / "adapter_model.safetensors"))
  with pytest.raises(interop.InteropError) as e:
    interop.import_adapters(folder, model)
  msg = str(e.value)
  assert "adapter_model.safetensors" in msg
  assert "mlp.fc1" in msg and "layers.1.self_attn.k_proj.lora_B" in msg

  # Adapters of this model do not fit a narrower one.
  good = interop.export_adapters(adapters, tmp_path / "w.pt", "release")
  with pytest.raises(interop.InteropError, match="does not fit"):
    interop.import_adapters(good, _narrow())
  with pytest.raises(interop.InteropError, match="no such"):
    interop.import_adapters(tmp_path / "missing.pt", model)
  # PEFT names transformers' CLIP / SigLIP modules: other families refuse.
  other = types.SimpleNamespace(
      name="pe", config=types.SimpleNamespace(family="pe_core"))
  with pytest.raises(interop.InteropError, match="'pe_core'"):
    interop.export_adapters(adapters, tmp_path / "p2", "peft", model=other)


def _narrow():
  """The tiny model with width 16 instead of 32 (for a misfit)."""
  from jaxfsl.models.config import clip_config

  return jaxfsl.build(clip_config(
      vision_width=16, vision_depth=2, vision_heads=2, patch_size=16,
      image_size=32, text_width=16, text_depth=2, text_heads=2, embed_dim=16,
      vocab_size=300, context_length=16), seed=0)


# ------------------------------------------------ seeds and the export tool

# The demo config shrunk as in tests/test_main.py, fewer episodes.
TINY = (
    "--config=configs/episodic/demo.py", "--config.model.image_size=32",
    "--config.model.vision_depth=1", "--config.dataset.synthetic.image_size=32",
    "--config.dataset.synthetic.num_classes=6",
    "--config.dataset.synthetic.images_per_class=8", "--config.query=3",
    "--config.steps=4", "--config.optim.lr=2e-3", "--config.episodes=3",
    "--config.episodes_per_batch=2", "--config.dataset.num_workers=1",
    "--config.save_adapters=True",
)


def _run_seeds(work, cache, *flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_backend_optimization_level=0",
             PYTHONPATH=str(REPO))
  env.pop("JAXFSL_TEST_KILL_AT", None)
  proc = subprocess.run(
      [sys.executable, "-m", "jaxfsl.main", *TINY, f"--workdir={work}",
       "--config.seeds=1,2,3", f"--config.jax_cache_dir={cache}", *flags],
      capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
  assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def seeds_job(tmp_path_factory):
  work = tmp_path_factory.mktemp("seeds") / "job"
  _run_seeds(work, tmp_path_factory.mktemp("xla_cache"))
  return work


def test_seeds_summary_equals_seed_results(seeds_job):
  summary = json.loads((seeds_job / "seeds.json").read_text())
  assert summary["seeds"] == [1, 2, 3]
  assert "3 seeds" in (seeds_job / "summary.md").read_text()
  means = []
  for row, seed in zip(summary["per_seed"], (1, 2, 3), strict=True):
    results = json.loads(
        (seeds_job / f"seed_{seed}" / "results.json").read_text())
    assert row["seed"] == seed == results["seed"]
    for key in ("accuracy_mean", "accuracy_ci95", "zero_shot_accuracy_mean",
                "zero_shot_accuracy_ci95", "num_episodes", "complete"):
      assert row[key] == results[key], (seed, key)
    assert results["complete"] and results["num_episodes"] == 3
    means.append(results["accuracy_mean"])
  assert summary["accuracy_mean"] == pytest.approx(np.mean(means))
  assert summary["accuracy_std_over_seeds"] == pytest.approx(
      np.std(means, ddof=1))
  assert summary["complete"]
  # Seeds are different jobs: their episodes differ.
  per_seed_acc = [[r["accuracy"] for r in json.loads(
      (seeds_job / f"seed_{s}" / "results.json").read_text())["episodes"]]
                  for s in (1, 2, 3)]
  assert len({tuple(a) for a in per_seed_acc}) > 1


def test_seeds_resume_and_eval_only(seeds_job, tmp_path):
  """Rerunning the command resumes every seed (a removed seed is redone,
  identically); eval_only re-evaluates every seed's saved adapters."""
  before = json.loads((seeds_job / "seeds.json").read_text())
  log = seeds_job / "log.txt"
  log_size = log.stat().st_size
  shutil.rmtree(seeds_job / "seed_3")
  _run_seeds(seeds_job, tmp_path / "cache")
  after = json.loads((seeds_job / "seeds.json").read_text())
  assert after == before
  new_log = log.read_text()[log_size:]
  assert new_log.count("Resuming: 3 episode(s) already done") == 2

  _run_seeds(seeds_job, tmp_path / "cache", "--config.eval_only=True")
  summary = json.loads(
      (seeds_job / "eval_only" / "seeds.json").read_text())
  assert summary["seeds"] == [1, 2, 3]
  for row in summary["per_seed"]:
    results = json.loads((seeds_job / f"seed_{row['seed']}" / "eval_only" /
                          "results.json").read_text())
    assert row["accuracy_mean"] == results["accuracy_mean"]
    assert results["max_abs_diff_vs_training"] <= 1e-6


def test_parse_seeds():
  assert seeds_mod.parse_seeds("1,2,3") == (1, 2, 3)
  assert seeds_mod.parse_seeds(" 4 ") == (4,)
  assert seeds_mod.parse_seeds((1, 5)) == (1, 5)
  from jaxfsl.protocols.episodic.runner import ConfigError

  for bad in ("1,x,-2", "1,1", "", 1.5):
    with pytest.raises(ConfigError, match="seeds"):
      seeds_mod.parse_seeds(bad)


def _tool():
  spec = importlib.util.spec_from_file_location(
      "export_adapters", REPO / "tools" / "export_adapters.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_export_tool(seeds_job, tmp_path, capsys):
  work = seeds_job / "seed_2"
  adapters = saved_workdir.load_saved_adapters(work, 2)
  assert adapters.config.towers == "vision"
  tool = _tool()
  for fmt, out in (("npz", tmp_path / "ep2"), ("peft", tmp_path / "peft"),
                   ("release", tmp_path / "ep2.pt")):
    assert tool.main([str(work), str(out), "--episode", "2", "--format",
                      fmt]) == 0
  from jaxfsl.protocols.episodic import runner

  model = runner.load_model(saved_workdir.job_config(work))
  for path in (tmp_path / "ep2.npz", tmp_path / "peft", tmp_path / "ep2.pt"):
    back = interop.import_adapters(path, model)
    assert back.config == adapters.config, path
    jax.tree.map(np.testing.assert_array_equal, back.params, adapters.params)
  # An episode that was not saved, and a multi-seed parent, are named.
  assert tool.main([str(work), str(tmp_path / "x"), "--episode", "7",
                    "--format", "npz"]) == 1
  assert "no adapters for episode 7" in capsys.readouterr().err
  assert tool.main([str(seeds_job), str(tmp_path / "x"), "--episode", "0",
                    "--format", "npz"]) == 1
  assert "seed_1" in capsys.readouterr().err


def test_imported_adapters_evaluate_with_eval_only(tmp_path):
  """A release .pt imported and installed into a fresh workdir is what
  eval_only evaluates on every episode."""
  from jaxfsl.protocols.episodic import runner

  config = runner.load_config(str(REPO / "configs" / "episodic" / "demo.py"))
  for flag in TINY[1:]:
    key, value = flag[len("--config."):].split("=")
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value == "True" if value in (
        "True", "False") else value)
  config.lora.rank, config.lora.alpha = 2, 4.0
  model = runner.load_model(config)
  path = interop.export_adapters(_random_adapters(model), tmp_path / "a.pt",
                                 "release")
  adapters = interop.import_adapters(path, model)

  config.lora.rank = 3
  with pytest.raises(interop.InteropError, match="--config.lora.rank"):
    saved_workdir.install_for_eval(adapters, config, tmp_path / "w")
  config.lora.rank = 2
  saved_workdir.install_for_eval(adapters, config, tmp_path / "w")
  config.eval_only = True
  results = runner.run(config, tmp_path / "w")
  assert results["eval_only"] and results["num_episodes"] == 3
  # The installed adapters are what was evaluated: per episode, the
  # adapted features' statistics differ from the zero-shot model's.
  for record in results["episodes"]:
    moved = [abs(record["stages"][m][-1] - record["zero_shot"][m])
             for m in record["zero_shot"]]
    assert max(moved) > 1e-4, record["index"]
  assert saved_workdir.load_saved_adapters(tmp_path / "w", 2) is not None


@pytest.mark.parametrize("trainable", ["coop", "maple"])
def test_export_tool_on_a_prompt_learner_workdir_says_what_is_possible(
    trainable, tmp_path, capsys):
  """CoOp/MaPLe: one ERROR naming what export supports and where the
  job's prompts are saved."""
  work = tmp_path / "w"
  work.mkdir()
  (work / "config.json").write_text(json.dumps({"trainable": trainable}))
  assert _tool().main([str(work), str(tmp_path / "x"), "--episode", "0",
                       "--format", "npz"]) == 1
  err = capsys.readouterr().err
  assert err.count("ERROR:") == 1 and "Traceback" not in err
  assert "export supports LoRA adapters (PEFT, release .pt, npz)" in err
  assert str(work / "adapters") in err and "not exported" in err
