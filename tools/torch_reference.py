"""The release's training step written the PyTorch way (benchmark reference).

``tools/benchmark.py --against torch`` times it beside jaxfsl's step, in
the same process. It lives here, outside the ``jaxfsl`` package, so that
the package never imports PyTorch; it needs torch and transformers (the
``test`` extra).
"""

from __future__ import annotations

import math
import warnings

from jaxfsl.models.config import VisionConfig
from jaxfsl.protocols.episodic.engine import EngineConfig


class TorchReferenceStep:
  """The release's training step written the PyTorch way, for comparison.

  ``transformers.CLIPVisionModelWithProjection`` built from a
  ``CLIPVisionConfig`` of the same size (random init, default attention
  implementation), LoRA on q, k and v of every block as separate rank-r side
  branches ``scaling * B(A(dropout(x)))`` (own dropout per target), the
  release's losses in float32 on one forward pass of the N augmented views
  and M clean support images (pixels, so the patch embedding runs every
  step as in the release): L_vlm, SVL and RA (``kl_div(A_v, F,
  log_target=True)``), and ``torch.optim.AdamW`` on the LoRA parameters only.
  Only CLIP-style towers (class-token pooling, projection) are supported.

  Settings (way, shot, LoRA, weights, optimiser, logit scale) come from
  the engine config the jaxfsl side runs. Importing this module does not
  import torch; constructing the class does.
  """

  def __init__(self, vision: VisionConfig, config: EngineConfig,
               threads: int | None = None, seed: int = 0):
    way, shot, num_views = config.way, config.shot, config.num_views
    lora, method, optim = config.lora, config.method, config.optim
    rank, alpha, dropout = lora.rank, lora.alpha, lora.dropout
    if config.trainable != "lora" or tuple(lora.targets) != ("q", "k", "v") \
        or lora.towers != "vision" or lora.blocks != "all":
      raise ValueError("the PyTorch reference implements vision LoRA on q, "
                       "k, v of every block only (the release's adapters)")
    if isinstance(config.logit_scale, str):
      raise ValueError("the PyTorch reference needs a numeric logit_scale")
    scale = float(config.logit_scale)
    svl, ra = method.uses_svl, method.uses_ra
    import torch
    from torch import nn
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if vision.pool != "cls" or not vision.proj:
      raise ValueError("the PyTorch reference supports CLIP-style towers "
                       "(class-token pooling and a projection) only")
    if threads:
      torch.set_num_threads(threads)
    torch.manual_seed(seed)
    self.torch = torch
    act = {"quick_gelu": "quick_gelu", "gelu": "gelu",
           "gelu_tanh": "gelu_pytorch_tanh"}[vision.act]
    hf_config = CLIPVisionConfig(
        hidden_size=vision.width, intermediate_size=vision.mlp_dim,
        projection_dim=vision.embed_dim, num_hidden_layers=vision.depth,
        num_attention_heads=vision.heads, image_size=vision.image_size,
        patch_size=vision.patch_size, hidden_act=act,
        layer_norm_eps=vision.norm_eps)
    model = CLIPVisionModelWithProjection(hf_config)
    model.requires_grad_(False)
    scaling = alpha / math.sqrt(rank)

    class LoraLinear(nn.Module):
      """base(x) + scaling * B(A(dropout(x))), base frozen."""

      def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.drop = nn.Dropout(dropout)
        self.a = nn.Linear(base.in_features, rank, bias=False)
        self.b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.b.weight)

      def forward(self, x):
        return self.base(x) + scaling * self.b(self.a(self.drop(x)))

    lora_params = []
    for layer in model.vision_model.encoder.layers:
      attn = layer.self_attn
      for name in ("q_proj", "k_proj", "v_proj"):
        wrapped = LoraLinear(getattr(attn, name))
        setattr(attn, name, wrapped)
        lora_params += [wrapped.a.weight, wrapped.b.weight]
    model.train()
    self.model = model
    self.optimizer = torch.optim.AdamW(lora_params, lr=optim.lr,
                                       betas=(optim.b1, optim.b2),
                                       eps=optim.eps,
                                       weight_decay=optim.weight_decay)
    self.weights = (method.anti_visual_weight, method.relation_weight)
    self.num_lora_params = sum(p.numel() for p in lora_params)
    n = num_views * way * shot
    m = way * shot if ra else 0
    self.n, self.m, self.way, self.scale = n, m, way, scale
    self.svl, self.ra = svl, ra
    gen = torch.Generator().manual_seed(seed)
    s = vision.image_size
    # The release's step encodes the clean support (RA's g) beside the views;
    # one forward pass of all N + M images.
    self.pixels = torch.randn(n + m, 3, s, s, generator=gen)
    y0 = torch.arange(way).repeat_interleave(shot)
    self.y0 = y0
    self.y = y0.repeat(num_views)
    text = torch.randn(way, vision.embed_dim, generator=gen)
    self.text = nn.functional.normalize(text, dim=-1)
    self.prev_relation = torch.zeros(n, way * shot)
    self.p = 0.5  # RA's fuse weight; any value in (0, 1) costs the same.
    self.attn_implementation = getattr(hf_config, "_attn_implementation",
                                       None)
    self.threads = torch.get_num_threads()

  def __call__(self):
    torch = self.torch
    fn = torch.nn.functional
    feats = self.model(pixel_values=self.pixels).image_embeds
    feats = fn.normalize(feats, dim=-1)
    f, g = feats[:self.n], feats[self.n:]
    t = self.text
    loss = fn.cross_entropy(self.scale * f @ t.T, self.y)
    if self.svl:
      slots = torch.randint(0, self.n, (self.way,))
      w = fn.normalize(f[slots], dim=-1)
      loss = loss + self.weights[0] * fn.cross_entropy(
          self.scale * f @ w.T, self.y)
    if self.ra:
      a_v = f @ g.T
      a_t = (t @ t.T)[self.y][:, self.y0]
      target = self.p * self.prev_relation + (1 - self.p) * a_t
      with warnings.catch_warnings():
        # torch warns that "mean" is not "batchmean"; the release uses it.
        warnings.simplefilter("ignore", UserWarning)
        l_ra = fn.kl_div(a_v, target, log_target=True, reduction="mean")
      loss = loss + self.weights[1] * l_ra
      self.prev_relation = a_v.detach()
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss.item()
