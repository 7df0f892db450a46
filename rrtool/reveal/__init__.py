"""Stage 1 (Reveal): the model produces its own forget data.

- :mod:`rrtool.reveal.phase`: the phase entry point, which picks the strategy.
- :mod:`rrtool.reveal.direct`: ``direct`` (one fixed instruction over the contexts) and the
  oracle scoring every strategy shares.
- :mod:`rrtool.reveal.search`: the ``neuralucb`` / ``random`` instruction search loop (decode,
  score, confirm, collect), resumable from its recorded state.
- :mod:`rrtool.reveal.records`: the forget/retain records written to the run.
- Model-independent cores: :mod:`rrtool.reveal.vendi` (Vendi diversity in the ``d x d`` form),
  :mod:`rrtool.reveal.embedder` (sentence embeddings), :mod:`rrtool.reveal.neuralucb` (Sobol
  pool, soft-prompt projection, the NeuralUCB surrogate), :mod:`rrtool.reveal.scoring` (the
  weighted harmonic mean of relevance and diversity).
"""
