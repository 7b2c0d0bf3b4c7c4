"""Scaling laws: sweeps over depth × FLOP budget, isoFLOP fits, plots, FLOPs accounting.

- :mod:`.flops`: training FLOPs per token three ways (by hand, ``estimate_flops()``,
  ``FlopCounterMode``) against Chinchilla's ``6N``;
- :mod:`.sweep`: the runner (one real training run per depth × budget, one CSV row each,
  resumable);
- :mod:`.fit`: isoFLOP parabolas, compute-optimal power laws with bootstrap intervals, the
  loss-vs-compute frontier;
- :mod:`.plot`: the figures (PNG + SVG).

Not to be confused with ``nanogpt_course.train.scaling``, the *depth rules* that turn
``--depth`` into width, batch, LRs, weight decay and horizon. Command line:
``python -m nanogpt_course.scaling_laws {sweep,fit,flops}``.
"""
