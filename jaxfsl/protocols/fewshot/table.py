"""The datasets x shots table of few-shot jobs (mean top-1 over seeds).

    print(fewshot_table(find_results("runs/")))

One table per (model, variant); a cell is the mean test top-1 (%) over the
seeds found, with the seed count when it is not 3 (the CoOp lineage runs
seeds 1, 2, 3). Published reference numbers can be passed as
``reference={dataset: {shot: accuracy_percent}}`` and are printed beside
(none are shipped: add them from the paper you compare with).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jaxfsl.data.fewshot.layouts import NAMES
from jaxfsl.io.markdown import markdown_table


def find_results(root: os.PathLike[str] | str) -> list[dict[str, Any]]:
  """Every few-shot ``results.json`` below ``root`` (recursively)."""
  out = []
  for path in sorted(Path(root).expanduser().rglob("results.json")):
    data = json.loads(path.read_text())
    if data.get("protocol") == "fewshot":
      data["_path"] = str(path)
      out.append(data)
  return out


def fewshot_table(results: Iterable[Mapping[str, Any]],
                  reference: Mapping[str, Mapping[int, float]] | None = None
                  ) -> str:
  """Markdown tables, datasets (benchmark order, then 'Average') x shots.

  Args:
    results: results.json dicts (``dataset``, ``shot``, ``seed``,
      ``variant``, ``model``, ``test_accuracy`` in [0, 1]).
    reference: optional published numbers in percent, shown as
      ``ours (ref)``.

  Returns:
    The tables, or a line saying that there are no results.
  """
  groups: dict[tuple[str, str], dict] = defaultdict(
      lambda: defaultdict(lambda: defaultdict(dict)))
  for r in results:
    cell = groups[(r["model"], r["variant"])][r["dataset"]][int(r["shot"])]
    cell[int(r["seed"])] = 100.0 * float(r["test_accuracy"])
  if not groups:
    return "No few-shot results found."
  blocks = []
  for (model, variant), table in sorted(groups.items()):
    shots = sorted({k for row in table.values() for k in row})
    datasets = [d for d in NAMES if d in table] + sorted(
        d for d in table if d not in NAMES)
    rows = []
    column_means: dict[int, list[float]] = defaultdict(list)
    for d in datasets:
      cells = []
      for k in shots:
        seeds = table[d].get(k, {})
        if not seeds:
          cells.append("")
          continue
        mean = sum(seeds.values()) / len(seeds)
        column_means[k].append(mean)
        text = f"{mean:.2f}"
        if len(seeds) != 3:
          text += f" (n={len(seeds)})"
        ref = (reference or {}).get(d, {}).get(k)
        if ref is not None:
          text += f" ({ref:.1f})"
        cells.append(text)
      rows.append([d, *cells])
    if len(datasets) > 1:
      avg = [f"{sum(v) / len(v):.2f}" if len(v) == len(datasets) else ""
             for v in (column_means[k] for k in shots)]
      rows.append(["Average", *avg])
    blocks.append(f"### {model}, variant {variant}\n\n" + markdown_table(
        ["dataset", *(f"{k}-shot" for k in shots)], rows))
  return "\n\n".join(blocks) + "\n"
