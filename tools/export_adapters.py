r"""Exports one episode's adapters from a job workdir.

  python tools/export_adapters.py WORKDIR --episode 0 --format peft OUT
  python tools/export_adapters.py WORKDIR --episode 0 --format release \
      lora_weights.pt
  python tools/export_adapters.py WORKDIR --episode 0 --format npz out/ep0

The job must have run with ``--config.save_adapters=True``. Formats (see
``jaxfsl.interop``):

* peft: a folder for ``peft.PeftModel.from_pretrained(CLIPModel/
  SiglipModel, OUT)`` (adapter_config.json with use_rslora, so PEFT scales
  by alpha / sqrt(r) as jaxfsl and the release do);
* release: the ``.pt`` of the release's / CLIP-LoRA's ``save_lora`` (needs
  torch), loadable by their ``load_lora`` with the same --r, --alpha,
  --encoder, --params, --position;
* npz: OUT.npz + OUT.json (LoRA settings and the backbone's fingerprint).

The job's backbone (its config's checkpoint or random-init preset) is
loaded to check the adapters against it and to fingerprint it; pass
``--no-model`` to skip that (e.g. when the checkpoint is elsewhere).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
  import jaxfsl.interop  # noqa: F401
except ImportError:  # Run from a checkout without `pip install -e .`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxfsl import interop
from jaxfsl.interop import workdir as saved


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdir", help="job workdir (with adapters/)")
  parser.add_argument("out", help="output folder (peft), .pt (release) or "
                      "NAME[.npz] (npz)")
  parser.add_argument("--episode", type=int, required=True,
                      help="episode index")
  parser.add_argument("--format", required=True, choices=interop.FORMATS)
  parser.add_argument("--position", default=None,
                      help="release only: the release's --position, needed "
                      "when the job tuned explicit block indices")
  parser.add_argument("--no-model", action="store_true",
                      help="do not load the backbone (no checks, no "
                      "fingerprint)")
  args = parser.parse_args(argv)
  from jaxfsl.checkpoints import CheckpointError
  from jaxfsl.protocols.episodic import runner

  try:
    config = saved.job_config(args.workdir)
    adapters = saved.load_saved_adapters(args.workdir, args.episode)
    model = None
    if not args.no_model:
      try:
        model = runner.load_model(config)
      except (runner.UserError, CheckpointError) as e:
        raise runner.UserError(
            f"{e}\n(pass --no-model to export without loading the "
            "backbone: no checks, no fingerprint)") from None
    base = config.model.checkpoint if not config.model.init else None
    out = interop.export_adapters(
        adapters, args.out, args.format, model=model,
        base_model_name_or_path=base or None, position=args.position)
  except (interop.InteropError, runner.UserError, CheckpointError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 1
  print(f"episode {args.episode} ({adapters.config}) -> {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
