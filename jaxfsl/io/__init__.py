"""Host-side results: statistics and the files a job writes. No JAX.

  aggregate      per-episode records, means and 95% intervals, over seeds
  reports        results.json / results.csv / step_losses.npz, write_all
  markdown       summary.md and the tables over jobs (tools/summarize.py)
  plots          the PNG plots
  metric_writer  TensorBoard scalars, from process 0 only
"""
