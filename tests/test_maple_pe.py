"""MaPLe on PE-Core: the prompted image features against an independent
PyTorch reference, the frozen patch-embedding path, the episode engine, what
prompt learners still refuse, and CoOp's identity on PE-Core's text tower.

The reference is written here from MaPLe's public semantics
(``muzairkhattak/multimodal-prompt-learning`` ``clip/model.py``
``VisionTransformer_MaPLe``; spec ``prompt_learners.md`` B.2) on top of the
modules of a random-init open_clip / timm PE-Core model (built as in
``test_parity_pe_core.py``): timm's patch embedding, class token, position
embedding, ``norm_pre``, its blocks' own ``forward``, its RoPE table
(``trunk.rope.get_embed()``), ``norm``, attention pooling and head. No jaxfsl
code computes the reference. The prompts are appended after the image
tokens (no position embedding), replaced before blocks 1..J-1, and dropped
before the attention pooling; RoPE leaves them unrotated. timm's RoPE
attention rotates the tokens after its prefix tokens by the rows of a
``cat([sin, cos])`` table, so rows ``sin = 0, cos = 1`` appended to the
grid's table give the prompts the identity rotation through timm's own block
forward; no block is reimplemented.
"""

from __future__ import annotations

import _torchvision_shim

_torchvision_shim.install()

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from test_finetune import make_batch  # noqa: E402
from test_parity_pe_core import CASES, _build_reference, to_official  # noqa: E402

import jaxfsl  # noqa: E402
from jaxfsl.models import build  # noqa: E402
from jaxfsl.models.families.pe_core import pe_core_config, without_text  # noqa: E402
from jaxfsl.models.two_towers import TwoTowers  # noqa: E402
from jaxfsl.trainables.maple import MapleConfig, MapleTrainable  # noqa: E402

N_CTX = 2
TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(CASES))
def loaded(request, tmp_path_factory):
  """A random-init open_clip PE-Core model and the same weights in jaxfsl
  (through the official ``.pt`` layout)."""
  # MaPLe's depth is bounded by both towers: as many text blocks as vision.
  c = dict(CASES[request.param])
  c["text_depth"] = c["depth"]
  ref = _build_reference(c, seed=7)
  with torch.no_grad():
    ref.visual.trunk.head.bias.zero_()  # the official layout has none
  path = tmp_path_factory.mktemp(request.param) / "PE-Core-maple.pt"
  torch.save(to_official(ref.state_dict()), path)
  return c, ref, jaxfsl.load_model(path, **c["options"])


def _tree(model, depth: int, seed: int) -> tuple[MapleTrainable, dict]:
  """A bound MaPLe learner and a tree whose every leaf is random (the deep
  couplings made to differ, unlike their identical init)."""
  maple = MapleTrainable(MapleConfig(n_ctx=N_CTX, depth=depth)).bind(model)
  tree = maple.init(jax.random.PRNGKey(seed), model.params, model.config)
  rng = np.random.RandomState(seed)
  tree = jax.tree.map(
      lambda a: np.asarray(a + 0.3 * rng.randn(*a.shape), np.float32), tree)
  return maple, tree


def _reference_image_features(ref, pixels: torch.Tensor, tree: dict,
                              depth: int) -> torch.Tensor:
  """MaPLe's vision forward on the open_clip PE-Core modules.

  Args:
    ref: open_clip ``CustomTextCLIP`` (timm ``vit_pe_core_*`` trunk).
    pixels: float [B, 3, S, S].
    tree: MaPLe's tree (numpy): ``ctx`` [n, Wt], ``proj`` {kernel [Wt, Wv],
      bias [Wv]}, ``deep_ctx`` [J-1, n, Wt], ``deep_proj`` {kernel
      [J-1, Wt, Wv], bias [J-1, Wv]}; None runs the plain tower.
    depth: J.

  Returns:
    float [B, E] image features (not normalised).
  """
  trunk = ref.visual.trunk
  t = {k: (torch.from_numpy(np.array(v)) if not isinstance(v, dict) else
           {kk: torch.from_numpy(np.array(vv)) for kk, vv in v.items()})
       for k, v in (tree or {}).items()}
  with torch.no_grad():
    x = trunk.patch_embed(pixels)  # [B, P, W], row-major patches
    b = x.shape[0]
    if trunk.cls_token is not None:
      x = torch.cat([trunk.cls_token.expand(b, -1, -1), x], dim=1)
    x = x + trunk.pos_embed
    rope = trunk.rope.get_embed()  # [P, 2 * head_dim]: cat([sin, cos])
    n = 0
    if tree is not None:
      shallow = t["ctx"] @ t["proj"]["kernel"] + t["proj"]["bias"]
      deep = [t["deep_ctx"][i] @ t["deep_proj"]["kernel"][i]
              + t["deep_proj"]["bias"][i] for i in range(depth - 1)]
      n = shallow.shape[0]
      x = torch.cat([x, shallow.expand(b, -1, -1)], dim=1)  # no pos. emb.
      half = rope.shape[-1] // 2
      identity = torch.cat([torch.zeros(n, half), torch.ones(n, half)], -1)
      rope = torch.cat([rope, identity], dim=0)  # sin 0, cos 1: unrotated
    x = trunk.norm_pre(x)
    for i, block in enumerate(trunk.blocks):
      if tree is not None and 1 <= i < depth:
        x = torch.cat([x[:, :-n], deep[i - 1].expand(b, -1, -1)], dim=1)
      x = block(x, rope=rope)
    x = trunk.norm(x)
    if n:
      x = x[:, :-n]  # the attention pooling sees the image tokens only
    return ref.visual.head(trunk.forward_head(x))


def _encode(model, maple, tree, pixels: np.ndarray, tokens: bool = False
            ) -> np.ndarray:
  module = TwoTowers(model.config, **maple.module_kwargs())
  variables = {"params": model.params, "prompts": tree}
  if tokens:  # The engine's path: frozen patch embedding, then the rest.
    embedded = module.apply({"params": model.params}, pixels,
                            method="embed_image")
    return np.asarray(module.apply(variables, embedded,
                                   method="encode_image_tokens"))
  return np.asarray(module.apply(variables, pixels, method="encode_image"))


def _unit(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_maple_image_features_match_a_torch_reference(loaded):
  c, ref, model = loaded
  # J = 2 .. the tower's depth: prompts replaced at layers 1..J-1, and (for
  # J below the depth) carried through the last layers.
  for depth in range(2, c["depth"] + 1):
    _check_against_reference(c, ref, model, depth)


def _check_against_reference(c: dict, ref, model, depth: int) -> None:
  size = c["grid"] * c["patch"]
  pixels = torch.randn(3, 3, size, size,
                       generator=torch.Generator().manual_seed(depth))
  jpixels = pixels.numpy().transpose(0, 2, 3, 1)
  # The hand-assembled reference is open_clip's own forward without prompts.
  plain = _reference_image_features(ref, pixels, None, depth)
  with torch.no_grad():
    torch.testing.assert_close(plain, ref.encode_image(pixels), rtol=0,
                               atol=1e-5)
  maple, tree = _tree(model, depth, seed=depth)
  want = _unit(F.normalize(
      _reference_image_features(ref, pixels, tree, depth), dim=-1).numpy())
  got = _unit(_encode(model, maple, tree, jpixels))
  deviation = float(np.abs(got - want).max())
  print(f"{c['class_token']=} {depth=} max |delta| {deviation:.2e}")
  assert deviation <= TOL
  # Not vacuous: the prompts move the features.
  assert np.abs(want - _unit(plain.numpy())).max() > 1e-2
  # The frozen patch-embedding path (the engine's) is the same computation.
  np.testing.assert_allclose(
      _unit(_encode(model, maple, tree, jpixels, tokens=True)), got,
      atol=1e-6)


@pytest.fixture(scope="module")
def tiny():
  return build("pe-core-tiny", seed=0)


def test_maple_trains_on_pe_core_in_the_engine(tiny):
  from jaxfsl.protocols.episodic.engine import (
    EngineConfig,
    EpisodeEngine,
    MethodConfig,
    OptimConfig,
    episode_keys,
  )

  batch = make_batch(tiny, 2)
  engine = EpisodeEngine(tiny, EngineConfig(
      way=5, shot=1, query=4, steps=10,
      method=MethodConfig(variant="svl_ra"), optim=OptimConfig(lr=5e-3),
      trainable="maple", trainable_config={"depth": 2}))
  out = engine.run_batch(batch, episode_keys(0, np.arange(2)),
                         return_adapters=True)
  vlm = out["losses"]["vlm"]
  assert np.isfinite(out["losses"]["total"]).all()
  assert np.all(vlm[:, -1] < vlm[:, 0]), vlm
  # SVL reaches MaPLe's vision prompts.
  assert np.abs(out["losses"]["anti_visual"][:, :3]).sum() > 0
  shapes = jax.tree.map(lambda a: a.shape[1:], out["adapters"])
  assert shapes["deep_proj"]["kernel"] == (1, 64, 64)  # Wt -> Wv, J-1 = 1


def test_prompt_learners_on_pe_core_and_what_is_still_refused(tiny):
  from jaxfsl.trainables import get_trainable
  from jaxfsl.trainables.base import TrainableConfigError

  config = tiny.config
  # PE-Core (CLIP text tower, its own vision tower with prompt hooks).
  for name, block in (("maple", {"depth": 2}), ("coop", {"n_ctx": 4})):
    assert get_trainable(name, block).model_problems(config) == []
  # Depth beyond PE's blocks: key, value and both depths.
  assert get_trainable("maple", {"depth": 3}).model_problems(config) == [
      "maple.depth=3 exceeds the model's blocks (text tower 2, vision tower "
      "2); expected maple.depth <= 2"]
  # A vision-only checkpoint (timm weights): its text tower is a stand-in.
  vision_only = without_text(pe_core_config(
      image_size=32, patch_size=16, width=64, depth=2, heads=2, embed_dim=32,
      text_width=64, text_depth=2, text_heads=2), "no text tower")
  for name, block in (("maple", {"depth": 2}), ("coop", {"n_ctx": 4})):
    problems = get_trainable(name, block).model_problems(vision_only)
    # The loader's reason (what the file holds, what to get instead), not
    # "the family's own modules, which take no prompt hooks".
    assert problems == [f"{name}: no text tower"]
  with pytest.raises(TrainableConfigError, match=r"^coop: no text tower$"):
    get_trainable("coop", {"n_ctx": 4}).bind(
        dataclasses.replace(tiny, config=vision_only))


def test_prompts_get_the_identity_rotation(tiny):
  """The prompts' rows appended to the RoPE angle table are zero (cos 1,
  sin 0), as PE-Core's class-token row; the image rows are unchanged."""
  from jaxfsl.models.pe import rope_2d_angles
  from jaxfsl.models.prompting import VisionPrompt

  angles = rope_2d_angles(2, 32, True)
  prompt = VisionPrompt(jnp.zeros((N_CTX, 64)))
  padded = prompt.rope_angles(angles)
  assert padded.shape == (angles.shape[0] + N_CTX, 32)
  np.testing.assert_array_equal(padded[:-N_CTX], angles)
  assert not padded[-N_CTX:].any() and not padded[0].any()  # as the cls row


def test_coop_on_pe_core_text_tower_identity(tiny):
  """CoOp needs only the text tower (PE-Core's is the shared one): from
  ``ctx_init="a photo of a"`` it gives, before any step, the plain prompts'
  text features (the user-checkable identity of issue 12)."""
  from jaxfsl.trainables.coop import CoopConfig, CoopTrainable

  coop = CoopTrainable(CoopConfig(ctx_init="a photo of a")).bind(tiny)
  tree = coop.init(jax.random.PRNGKey(0), tiny.params, tiny.config)
  ids = jnp.asarray(tiny.tokenize([f"a photo of a {n}." for n in
                                   ("dog", "sea lion", "car")]))
  module = TwoTowers(tiny.config, **coop.module_kwargs())
  prompted = module.apply({"params": tiny.params, "prompts": tree}, ids,
                          method="encode_text")
  np.testing.assert_allclose(_unit(prompted), _unit(tiny.encode_text(
      ["a photo of a dog.", "a photo of a sea lion.", "a photo of a car."])),
                             atol=1e-5)
  # (A per-vector constant shift would not do: the pre-LNs remove it.)
  noise = 0.5 * jax.random.normal(jax.random.PRNGKey(1), tree["ctx"].shape)
  moved = module.apply({"params": tiny.params,
                        "prompts": {"ctx": tree["ctx"] + noise}}, ids,
                       method="encode_text")
  assert np.abs(_unit(moved) - _unit(prompted)).max() > 1e-3
