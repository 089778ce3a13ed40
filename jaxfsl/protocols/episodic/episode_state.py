"""What one episode carries on the device: its fixed inputs and its state.

``EpisodeInputs`` is ``EpisodeProgram.prepare``'s output (the episode's
pixels embedded once, the class prompts encoded once); ``EpisodeState`` is
what ``EpisodeProgram.train_step`` threads from step to step. Shapes as in
``program``: M clean support images, N = V * M augmented views, Q queries,
P patches, W width, D feature width, L text context length.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax

Array = jax.Array


@flax.struct.dataclass
class EpisodeState:
  """What one episode carries from step to step.

  Attributes:
    adapters: the trainable pytree (float32; LoRA: the adapter tree).
    opt_state: AdamW state over it.
    prev_relation: float32 [N, M], A_v of the previous step (RA target).
    loss: float32 [], last total loss.
    first_nonfinite_step: int32 [], -1 until a loss is NaN/inf.
    loss_scale: float32 [], the dynamic loss scale (``EngineConfig.
      loss_scaling == "dynamic"``), else None.
    finite_steps: int32 [], finite steps since the scale last changed
      (dynamic loss scaling), else None.
  """

  adapters: Any
  opt_state: Any
  prev_relation: Array
  loss: Array
  first_nonfinite_step: Array
  loss_scale: Array | None = None
  finite_steps: Array | None = None


@flax.struct.dataclass
class EpisodeInputs:
  """The fixed, device-side inputs of one episode after ``prepare``.

  Attributes:
    view_tokens: [N, P, W] patch tokens of the augmented views.
    view_labels: int32 [N].
    clean_tokens: [M, P, W] patch tokens of the clean support.
    clean_labels: int32 [M].
    query_tokens: [Q, P, W].
    query_labels: int32 [Q].
    text_ids: int32 [way, L] class prompts.
    text_feats: float32 [way, D] L2-normalised prompt features of the
      pretrained text tower (recomputed per step when it is tuned).
    image_feats: None, or (when the trainable leaves the vision tower
      alone) the fixed L2-normalised features (views [N, D], clean [M, D],
      queries [Q, D]).
  """

  view_tokens: Array
  view_labels: Array
  clean_tokens: Array
  clean_labels: Array
  query_tokens: Array
  query_labels: Array
  text_ids: Array
  text_feats: Array
  image_feats: tuple[Array, Array, Array] | None = None
