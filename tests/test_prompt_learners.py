"""Prompt learners (CoOp, MaPLe): parity with an independent PyTorch reference.

The reference below is written from the methods' public semantics (CoOp's
``PromptLearner`` / ``TextEncoder``, MaPLe's prompt learner and
``*_MaPLe`` towers) directly on transformers' CLIP / SigLIP modules
(embeddings, encoder layers, final norms, projections), row by row with
explicit slicing, and shares no code with jaxfsl. Small random models are
built and saved by ``_reference`` (as in test_parity_hf.py) and loaded with
``jaxfsl.load_model``.
"""

import logging

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxfsl import load_model
from jaxfsl.models.prompting import PromptLayout
from jaxfsl.models.two_towers import TwoTowers

TOL = 1e-4
CONTEXT = 16
EOS = 99
# Text and vision widths differ so MaPLe's coupling must use both.
CLIP_KW = dict(vision_width=48, vision_heads=4, vision_depth=3, patch=16,
               image=32, text_width=40, text_heads=4, text_depth=4, embed=24,
               eos_token_id=EOS)
SIGLIP_KW = dict(width=48, heads=4, depth=2, patch=16, image=32,
                 text_width=40, text_heads=4, text_depth=3)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
  hf = ref.hf_clip(**CLIP_KW, seed=11)
  folder = ref.write_hf(hf, tmp_path_factory.mktemp("clip") / "hf")
  return hf, load_model(folder)


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
  hf = ref.hf_siglip(**SIGLIP_KW, seed=12)
  folder = ref.write_hf(hf, tmp_path_factory.mktemp("siglip") / "hf")
  return hf, load_model(folder)


# ---------------------------------------------------------------- inputs


def placeholder_ids(name_lens, n_ctx, start, eos, pad, suffix, seed,
                    context=CONTEXT, bos=98, placeholder=5):
  """Rows ``[bos]*start X*n name(k) suffix.. eos pad..`` (int64 [C, L])."""
  rng = np.random.default_rng(seed)
  ids = np.full((len(name_lens), context), pad, np.int64)
  for row, k in enumerate(name_lens):
    tokens = ([bos] * start + [placeholder] * n_ctx
              + list(rng.integers(10, 90, size=k)) + list(suffix) + [eos])
    ids[row, :len(tokens)] = tokens
  return ids


def normal(shape, seed, scale=0.1):
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(
      np.float32)


# ------------------------------------------------------ PyTorch reference


def _t(x):
  return torch.from_numpy(np.asarray(x, np.float32))


def ref_prompt_embeddings(token_embeds, ids, ctx, start, position, eos,
                          n_suffix):
  """CoOp's prompt assembly, one class at a time: [prefix, ctx/name, rest]."""
  n = ctx.shape[-2]
  rows = []
  for r in range(ids.shape[0]):
    e = token_embeds[r]
    c = ctx if ctx.dim() == 2 else ctx[r]
    eot = int(np.flatnonzero(ids[r] == eos)[0])
    k = eot - start - n - n_suffix  # class-name tokens
    prefix, name = e[:start], e[start + n:start + n + k]
    rest = e[start + n + k:]
    if position == "end":
      parts = [prefix, c, name, rest]
    elif position == "front":
      parts = [prefix, name, c, rest]
    else:
      h = n // 2
      parts = [prefix, c[:h], name, c[h:], rest]
    rows.append(torch.cat(parts, 0))
  return torch.stack(rows)


def _layer(layer, x, mask):
  out = layer(x, mask)
  return out[0] if isinstance(out, tuple) else out


def ref_text(hf, family, ids, ctx, *, start, position="end", n_suffix=1,
             deep=None):
  """Prompted text features from transformers' modules ([C, E] numpy)."""
  tm = hf.text_model
  n, length = ctx.shape[-2], ids.shape[1]
  with torch.no_grad():
    x = tm.embeddings.token_embedding(torch.from_numpy(ids))
    x = ref_prompt_embeddings(x, ids, _t(ctx), start, position,
                              EOS if family == "clip" else 1, n_suffix)
    x = x + tm.embeddings.position_embedding.weight[:length]
    mask = None
    if family == "clip":
      mask = torch.full((length, length), torch.finfo(torch.float32).min)
      mask = torch.triu(mask, diagonal=1)[None, None]
    for i, layer in enumerate(tm.encoder.layers):
      if deep is not None and 1 <= i <= deep.shape[0]:
        d = _t(deep[i - 1]).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :start], d, x[:, start + n:]], 1)
      x = _layer(layer, x, mask)
    x = tm.final_layer_norm(x)
    if family == "clip":
      eot = [int(np.flatnonzero(row == EOS)[0]) for row in ids]
      return hf.text_projection(x[torch.arange(len(ids)), eot]).numpy()
    return tm.head(x[:, -1]).numpy()


def ref_clip_image(hf, pixels, shallow, deep):
  """MaPLe's image features: prompts appended after the pos-embedded tokens,
  replaced at layers 1..J-1, the class token read out."""
  vm = hf.vision_model
  n = shallow.shape[0]
  with torch.no_grad():
    x = vm.embeddings(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
    x = torch.cat([x, shallow.expand(x.shape[0], -1, -1)], 1)
    x = vm.pre_layrnorm(x)
    for i, layer in enumerate(vm.encoder.layers):
      if 1 <= i <= deep.shape[0]:
        x = torch.cat([x[:, :-n], deep[i - 1].expand(x.shape[0], -1, -1)], 1)
      x = _layer(layer, x, None)
    return hf.visual_projection(vm.post_layernorm(x[:, 0])).numpy()


def ref_siglip_image(hf, pixels, shallow, deep):
  """MaPLe on SigLIP (our choice, see jaxfsl.models.prompting): as CLIP, but
  the attention-pooling head reads the image tokens without the prompts."""
  vm = hf.vision_model
  n = shallow.shape[0]
  with torch.no_grad():
    x = vm.embeddings(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
    x = torch.cat([x, shallow.expand(x.shape[0], -1, -1)], 1)
    for i, layer in enumerate(vm.encoder.layers):
      if 1 <= i <= deep.shape[0]:
        x = torch.cat([x[:, :-n], deep[i - 1].expand(x.shape[0], -1, -1)], 1)
      x = _layer(layer, x, None)
    return vm.head(vm.post_layernorm(x[:, :-n])).numpy()


def ref_couple(ctx, kernel, bias):
  """MaPLe's coupling ``nn.Linear(Wt, Wv)`` with the given weights."""
  linear = torch.nn.Linear(kernel.shape[0], kernel.shape[1])
  with torch.no_grad():
    linear.weight.copy_(_t(kernel).T)
    linear.bias.copy_(_t(bias))
    return linear(_t(ctx))


# ------------------------------------------------------------- jaxfsl side


def ours(model, layout, tree, method, x):
  module = TwoTowers(model.config, prompt_layout=layout)
  variables = {"params": model.params}
  if tree is not None:
    variables[layout.collection] = jax.tree.map(jnp.asarray, tree)
  return np.asarray(module.apply(variables, jnp.asarray(x), method=method))


# ------------------------------------------------------------------ CoOp

NAME_LENS = (1, 3, 2, 4)


@pytest.mark.parametrize("position,csc", [
    ("end", False), ("middle", False), ("front", False), ("middle", True)])
def test_coop_clip_matches_reference(clip, position, csc):
  hf, model = clip
  n = 4
  ids = placeholder_ids(NAME_LENS, n, start=1, eos=EOS, pad=EOS, suffix=[7],
                        seed=0)
  shape = (len(NAME_LENS), n, 40) if csc else (n, 40)
  ctx = normal(shape, seed=1)
  layout = PromptLayout(n_ctx=n, start=1, position=position, eos_id=EOS)
  got = ours(model, layout, {"ctx": ctx}, "encode_text", ids)
  want = ref_text(hf, "clip", ids, ctx, start=1, position=position)
  diff = ref.max_normalized_diff(got, want)
  print(f"\nCoOp CLIP {position} csc={csc}: {diff:.2e}")
  assert diff <= TOL
  # The prompts matter: the placeholder prompt itself encodes differently.
  plain = ref.hf_text_features(hf, ids)
  assert ref.max_normalized_diff(got, plain) > 1e-2


@pytest.mark.parametrize("position", ["end", "front"])
def test_coop_siglip_matches_reference(siglip, position):
  # SigLIP: no start token (the context begins at 0), no "." (the tokenizer
  # drops punctuation), pad == eos == 1, pooled at the last position.
  hf, model = siglip
  n = 3
  ids = placeholder_ids(NAME_LENS, n, start=0, eos=1, pad=1, suffix=[],
                        seed=2)
  ctx = normal((n, 40), seed=3)
  layout = PromptLayout(n_ctx=n, start=0, position=position, eos_id=1,
                        n_suffix=0)
  got = ours(model, layout, {"ctx": ctx}, "encode_text", ids)
  want = ref_text(hf, "siglip", ids, ctx, start=0, position=position,
                  n_suffix=0)
  diff = ref.max_normalized_diff(got, want)
  print(f"\nCoOp SigLIP {position}: {diff:.2e}")
  assert diff <= TOL
  assert ref.max_normalized_diff(got, ref.hf_text_features(hf, ids)) > 1e-2


def test_coop_positions_differ(clip):
  # Guards the position parity cases: the three layouts are told apart.
  _, model = clip
  ids = placeholder_ids(NAME_LENS, 4, start=1, eos=EOS, pad=EOS, suffix=[7],
                        seed=0)
  ctx = normal((4, 40), seed=1)
  feats = {p: ours(model, PromptLayout(n_ctx=4, position=p, eos_id=EOS),
                   {"ctx": ctx}, "encode_text", ids)
           for p in ("end", "middle", "front")}
  assert ref.max_normalized_diff(feats["end"], feats["middle"]) > 1e-3
  assert ref.max_normalized_diff(feats["end"], feats["front"]) > 1e-3


# ------------------------------------------------------------------ MaPLe


def maple_tree(n, depth, wt, wv, seed):
  return {
      "ctx": normal((n, wt), seed),
      "deep_ctx": normal((depth - 1, n, wt), seed + 1),
      "proj": {"kernel": normal((wt, wv), seed + 2, 0.2),
               "bias": normal((wv,), seed + 3)},
      "deep_proj": {"kernel": normal((depth - 1, wt, wv), seed + 4, 0.2),
                    "bias": normal((depth - 1, wv), seed + 5)},
  }


@pytest.mark.parametrize("depth", [3, 2])
def test_maple_clip_matches_reference(clip, depth):
  # depth 3 of 4 text blocks: the last block passes the prompts through.
  hf, model = clip
  n = 2
  tree = maple_tree(n, depth, 40, 48, seed=20)
  layout = PromptLayout(n_ctx=n, start=1, eos_id=EOS, depth=depth,
                        vision=True)
  ids = placeholder_ids(NAME_LENS, n, start=1, eos=EOS, pad=EOS, suffix=[7],
                        seed=4)
  txt = ours(model, layout, tree, "encode_text", ids)
  want_txt = ref_text(hf, "clip", ids, tree["ctx"], start=1,
                      deep=tree["deep_ctx"])
  pixels = ref.random_pixels(3, 32, seed=5)
  img = ours(model, layout, tree, "encode_image", pixels)
  shallow = ref_couple(tree["ctx"], tree["proj"]["kernel"],
                       tree["proj"]["bias"])
  deep = torch.stack([
      ref_couple(tree["deep_ctx"][i], tree["deep_proj"]["kernel"][i],
                 tree["deep_proj"]["bias"][i]) for i in range(depth - 1)])
  want_img = ref_clip_image(hf, pixels, shallow, deep)
  dt = ref.max_normalized_diff(txt, want_txt)
  di = ref.max_normalized_diff(img, want_img)
  print(f"\nMaPLe CLIP J={depth}: text {dt:.2e} image {di:.2e}")
  assert dt <= TOL and di <= TOL
  assert ref.max_normalized_diff(img, ref.hf_image_features(hf, pixels)) > 1e-2
  # The deep prompts matter (not only the shallow ones).
  shallow_only = ref_text(hf, "clip", ids, tree["ctx"], start=1)
  assert ref.max_normalized_diff(txt, shallow_only) > 1e-3


def test_maple_siglip_matches_reference(siglip):
  hf, model = siglip
  n, depth = 2, 2
  tree = maple_tree(n, depth, 40, 48, seed=40)
  layout = PromptLayout(n_ctx=n, start=0, eos_id=1, n_suffix=0, depth=depth,
                        vision=True)
  ids = placeholder_ids(NAME_LENS, n, start=0, eos=1, pad=1, suffix=[],
                        seed=10)
  pixels = ref.random_pixels(2, 32, seed=11)
  txt = ours(model, layout, tree, "encode_text", ids)
  img = ours(model, layout, tree, "encode_image", pixels)
  shallow = ref_couple(tree["ctx"], tree["proj"]["kernel"],
                       tree["proj"]["bias"])
  deep = ref_couple(tree["deep_ctx"][0], tree["deep_proj"]["kernel"][0],
                    tree["deep_proj"]["bias"][0])[None]
  dt = ref.max_normalized_diff(txt, ref_text(
      hf, "siglip", ids, tree["ctx"], start=0, n_suffix=0,
      deep=tree["deep_ctx"]))
  di = ref.max_normalized_diff(img, ref_siglip_image(hf, pixels, shallow,
                                                     deep))
  print(f"\nMaPLe SigLIP J={depth}: text {dt:.2e} image {di:.2e}")
  assert dt <= TOL and di <= TOL
  assert ref.max_normalized_diff(img, ref.hf_image_features(hf, pixels)) > 1e-2


def test_maple_patch_embedding_cache(clip):
  # The engine embeds fixed images once (embed_image) and runs
  # encode_image_tokens every step: MaPLe's prompts enter after the cache.
  _, model = clip
  layout = PromptLayout(n_ctx=2, eos_id=EOS, depth=3, vision=True)
  tree = jax.tree.map(jnp.asarray, maple_tree(2, 3, 40, 48, seed=30))
  module = TwoTowers(model.config, prompt_layout=layout)
  variables = {"params": model.params, "prompts": tree}
  pixels = jnp.asarray(ref.random_pixels(2, 32, seed=6))
  tokens = module.apply({"params": model.params}, pixels,
                        method="embed_image")
  cached = module.apply(variables, tokens, method="encode_image_tokens")
  full = module.apply(variables, pixels, method="encode_image")
  np.testing.assert_allclose(cached, full, rtol=1e-6, atol=1e-6)


def test_without_prompts_bit_identical(clip):
  # A prompt layout with no "prompts" collection runs the plain towers.
  _, model = clip
  layout = PromptLayout(n_ctx=2, eos_id=EOS, depth=3, vision=True)
  ids = placeholder_ids(NAME_LENS, 2, start=1, eos=EOS, pad=EOS, suffix=[7],
                        seed=7)
  pixels = ref.random_pixels(2, 32, seed=8)
  for method, x in (("encode_text", ids), ("encode_image", pixels)):
    plain = TwoTowers(model.config).apply({"params": model.params},
                                          jnp.asarray(x), method=method)
    np.testing.assert_array_equal(
        ours(model, layout, None, method, x), np.asarray(plain))


# ------------------------------------------------------------ Trainables


class WordTokenizer:
  """A word-level stand-in for a checkpoint's tokenizer (vocab 100).

  ``clip=True``: ``[bos] words "." [eos] [eos]..`` (CLIP: start token, "."
  kept, padded with eos); ``clip=False``: ``words [eos] [eos]..`` with
  punctuation dropped (SigLIP). Unknown words get fresh ids from 10 up.
  """

  def __init__(self, clip: bool, eos: int, context: int = CONTEXT):
    self.clip, self.eos_id, self.context_length = clip, eos, context
    self.vocab = {".": 7}

  def _id(self, word):
    if word not in self.vocab:
      self.vocab[word] = 10 + len(self.vocab)
    return self.vocab[word]

  def __call__(self, texts):
    out = np.full((len(texts), self.context_length), self.eos_id, np.int32)
    for row, text in enumerate(texts):
      text = text.lower().replace(".", " . " if self.clip else " ")
      ids = [self._id(w) for w in text.split()]
      ids = ([98] if self.clip else []) + ids
      ids = ids[:self.context_length - 1] + [self.eos_id]
      out[row, :len(ids)] = ids
    return out


def _bound(name, block, model, num_classes=None):
  from jaxfsl.trainables.base import get_trainable
  return get_trainable(name, block).bind(model, num_classes)


def _apply(model, trainable, tree, method, x):
  module = TwoTowers(model.config, **trainable.module_kwargs())
  variables = {"params": model.params, trainable.collection: tree}
  return np.asarray(jax.jit(module.apply, static_argnames="method")(
      variables, jnp.asarray(x), method=method))


NAMES = ["cat", "sea_lion", "red fox", "dog"]


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_coop_ctx_init_equals_plain_prompt(clip, siglip, family, caplog):
  # The user-checkable identity: CoOp from ctx_init="a photo of a" encodes,
  # before any step, exactly what "a photo of a {name}." encodes.
  import dataclasses
  hf, model = clip if family == "clip" else siglip
  model = dataclasses.replace(model, tokenizer=WordTokenizer(
      family == "clip", EOS if family == "clip" else 1))
  with caplog.at_level(logging.INFO):
    coop = _bound("coop", {"ctx_init": "a photo of a", "n_ctx": 16}, model)
  assert coop.layout.n_ctx == 4  # overridden to the phrase's token count
  assert "coop.n_ctx=16 overridden to 4" in caplog.text
  assert coop.layout.start == (1 if family == "clip" else 0)
  assert coop.layout.n_suffix == (1 if family == "clip" else 0)
  assert coop.prompt_template == "a photo of a {}."
  tree = coop.init(jax.random.PRNGKey(0), model.params, model.config)
  assert tree["ctx"].shape == (4, 40)
  # The engine passes the plain prompts' ids; CoOp's own are the same here.
  ids = model.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
  np.testing.assert_array_equal(coop.text_ids(model.tokenizer, NAMES), ids)
  got = _apply(model, coop, tree, "encode_text", ids)
  plain = model.encode_text(ids)
  np.testing.assert_allclose(ref.l2n(got), ref.l2n(plain), atol=1e-5)
  # Guard: a perturbed context does move the features (a random one: a
  # constant shift would vanish in the LayerNorms).
  moved = _apply(model, coop, {"ctx": tree["ctx"] + normal((4, 40), 3)},
                 "encode_text", ids)
  assert ref.max_normalized_diff(moved, plain) > 1e-3


def test_an_init_phrase_must_leave_room_for_the_class_name():
  # A ctx_init as long as the context (or longer: the tokenizer truncates
  # it) used to bind, and every class prompt lost its name to truncation.
  from jaxfsl.trainables.base import TrainableConfigError
  from jaxfsl.trainables.prompt_learner import PromptText

  tok = WordTokenizer(True, EOS)  # [bos] .. [eos] in 16: 13 words + a name
  fits = " ".join(f"w{i}" for i in range(13))
  for key, sets in (("coop", True), ("maple", False)):
    text = PromptText.resolve(tok, 2, fits, phrase_sets_n_ctx=sets, key=key)
    assert len(text.prefix_ids) == 13
    for words in (14, 40):
      phrase = " ".join(f"w{i}" for i in range(words))
      with pytest.raises(TrainableConfigError) as e:
        PromptText.resolve(tok, 2, phrase, phrase_sets_n_ctx=sets, key=key)
      assert str(e.value) == (
          f"{key}.ctx_init={phrase!r} tokenises to 14 tokens (or more: "
          "truncated), which leaves no room for a class name in the model's "
          "text context of 16 tokens; expected at most 13 tokens")


def test_cut_class_names_are_the_prompts_that_do_not_fit(clip):
  # 16-token context, [bos] .. "." [eos]: with 8 placeholders a name of up
  # to 5 words fits; "a photo of a" (4 words) is replaced by the 8.
  import dataclasses
  _, model = clip
  model = dataclasses.replace(model, tokenizer=WordTokenizer(True, EOS))
  names = ["dog", "a b c d e", "a b c d e f", "a b c d e f g h i j k"]
  coop = _bound("coop", {"n_ctx": 8}, model)
  assert coop.cut_class_names(model.tokenizer, names) == {
      "a b c d e f": 1, "a b c d e f g h i j k": 4}
  # The last one: its plain prompt was itself cut at 16 (counted as full).
  assert _bound("coop", {"n_ctx": 3}, model).cut_class_names(
      model.tokenizer, names) == {}
  # MaPLe's prompts are the plain ones: nothing is cut that was not.
  maple = _bound("maple", {"depth": 2}, model)
  assert maple.cut_class_names(model.tokenizer, names) == {}


def test_coop_trainable_random_init_and_settings(clip):
  import dataclasses
  _, model = clip
  model = dataclasses.replace(model, tokenizer=WordTokenizer(True, EOS))
  with pytest.raises(ValueError, match="coop.n_ctx=16 does not fit.*16 tok"):
    _bound("coop", None, model)  # the default 16 in a 16-token context
  coop = _bound("coop", {"n_ctx": 8}, model)
  assert coop.towers == frozenset({"text"})
  assert coop.prompt_template == " ".join(["X"] * 8) + " {}."
  tree = coop.init(jax.random.PRNGKey(1), model.params, model.config)
  assert tree["ctx"].shape == (8, 40)
  assert 0.015 < float(jnp.std(tree["ctx"])) < 0.025
  csc = _bound("coop", {"n_ctx": 3, "class_specific": True,
                        "class_token_position": "front"}, model, 4)
  assert csc.init(jax.random.PRNGKey(1), model.params,
                  model.config)["ctx"].shape == (4, 3, 40)
  ids = model.tokenize([f"a photo of a {n}." for n in NAMES])
  # Episodes are vmapped: a batch of trees against one backbone.
  trees = jax.vmap(lambda k: csc.init(k, model.params, model.config))(
      jax.random.split(jax.random.PRNGKey(2), 3))
  module = TwoTowers(model.config, **csc.module_kwargs())
  feats = jax.vmap(lambda t: module.apply(
      {"params": model.params, "prompts": t}, jnp.asarray(ids),
      method="encode_text"))(trees)
  assert feats.shape == (3, 4, 24) and np.all(np.isfinite(feats))
  with pytest.raises(ValueError, match="coop.n_ctx.*coop.class_token_posit"):
    _bound("coop", {"n_ctx": 0, "class_token_position": "left"}, model)
  with pytest.raises(ValueError, match=r"coop.colour.*coop.size"):
    _bound("coop", {"colour": 1, "size": 2}, model)
  with pytest.raises(ValueError, match="needs the number of classes"):
    _bound("coop", {"class_specific": True, "n_ctx": 2}, model)
  with pytest.raises(RuntimeError, match="bind"):
    from jaxfsl.trainables.coop import CoopTrainable
    CoopTrainable().module_kwargs()


def test_maple_trainable(clip):
  import dataclasses
  _, model = clip
  model = dataclasses.replace(model, tokenizer=WordTokenizer(True, EOS))
  with pytest.raises(ValueError, match=r"maple.depth=9 exceeds.*depth <= 3"):
    _bound("maple", None, model)
  # A family's own tower module without PROMPT_HOOKS takes no prompts
  # (PE-Core's RoPE ViT has them: tests/test_maple_pe.py).
  own = type("OwnVision", (type(model.config.vision),), {"TOWER": "m:Tower"})
  other = dataclasses.replace(model, config=dataclasses.replace(
      model.config, vision=own(**dataclasses.asdict(model.config.vision))))
  with pytest.raises(ValueError,
                     match=r"maple: the vision \(OwnVision\) tower.*no prompt"):
    _bound("maple", {"depth": 3}, other)
  _bound("coop", {"n_ctx": 2}, other)  # CoOp only needs the text tower
  maple = _bound("maple", {"depth": 3}, model)
  assert maple.towers == frozenset({"vision", "text"})
  assert maple.prompt_template == "a photo of a {}."  # "of a" stays text
  tree = maple.init(jax.random.PRNGKey(0), model.params, model.config)
  shapes = jax.tree.map(lambda x: x.shape, tree)
  assert shapes == {"ctx": (2, 40), "deep_ctx": (2, 2, 40),
                    "proj": {"kernel": (40, 48), "bias": (48,)},
                    "deep_proj": {"kernel": (2, 40, 48), "bias": (2, 48)}}
  # ctx = the embeddings of "a", "photo"; deep couplings start identical.
  ids = model.tokenize([f"a photo of a {n}." for n in NAMES])
  np.testing.assert_array_equal(
      tree["ctx"], model.params["txt"]["token_embed"][ids[0, 1:3]])
  np.testing.assert_array_equal(tree["deep_proj"]["kernel"][0],
                                tree["deep_proj"]["kernel"][1])
  bound = 1 / np.sqrt(40)
  assert float(jnp.max(jnp.abs(tree["proj"]["kernel"]))) <= bound
  # Gradients reach every leaf through the image and text features.
  module = TwoTowers(model.config, **maple.module_kwargs())
  pixels = jnp.asarray(ref.random_pixels(2, 32, seed=9))

  def loss(t):
    v = {"params": model.params, "prompts": t}
    img = module.apply(v, pixels, method="encode_image")
    txt = module.apply(v, jnp.asarray(ids), method="encode_text")
    return jnp.sum(jnp.sin(img @ txt.T))

  grads = jax.jit(jax.grad(loss))(tree)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.max(jnp.abs(g))) > 0, path


LONG = "a very long class name that fills up the whole context"


@pytest.mark.parametrize("family,block", [
    ("clip", {"n_ctx": 8}),             # 4 template tokens -> 8: tail right
    ("clip", {"n_ctx": 2, "class_token_position": "front"}),   # tail left
    ("siglip", {"n_ctx": 6}),
    ("clip", {"ctx_init": "itap of a"}),
    ("maple", {"ctx_init": "a good photo of the", "n_ctx": 2}),
])
def test_plain_ids_rewritten_to_learner_prompts(family, block):
  # The text tower rewrites the engine's plain-prompt ids into the learner's
  # prompts: exactly what the tokenizer gives for the learner's own strings,
  # truncation (EOT kept last) included.
  import types

  from jaxfsl.models.prompting import relayout_ids
  clip_like = family != "siglip"
  tok = WordTokenizer(clip_like, EOS if clip_like else 1)
  model = types.SimpleNamespace(tokenizer=tok, config=types.SimpleNamespace(
      text=types.SimpleNamespace(depth=4), vision=types.SimpleNamespace(
          depth=4)))
  name = "maple" if family == "maple" else "coop"
  for template in ("a photo of a {}.", "{} texture."):
    learner = _bound(name, dict(block, **({"depth": 2} if name == "maple"
                                          else {})), model)
    learner = learner.bind(model, template=template)
    layout = learner.layout
    # A truncated plain row cannot regain its lost tokens: the long name
    # only where the learner's prefix is no shorter than the template's.
    longer = len(layout.prefix_ids) >= layout.template_prefix_len
    names = NAMES + ([LONG] if longer else [])
    plain = tok([template.format(n.replace("_", " ")) for n in names])
    got = np.asarray(relayout_ids(jnp.asarray(plain), learner.layout))
    suffix = template.split("{}")[1]
    prefix = learner.prompt_template[:-len(" {}.")]
    want = tok([f"{prefix} {n.replace('_', ' ')}{suffix}" for n in names])
    np.testing.assert_array_equal(got, want, err_msg=f"{block} {template}")
