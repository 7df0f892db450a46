"""Stage 1 (Reveal): the model-independent cores of the instruction search.

- :mod:`rrtool.reveal.vendi`: Vendi diversity, exact, in the ``d x d`` form that stays cheap
  however large the self-generated forget set grows.
- :mod:`rrtool.reveal.embedder`: sentence embeddings the diversity is measured on.
- :mod:`rrtool.reveal.neuralucb`: the Sobol candidate pool, the soft-prompt projection and the
  NeuralUCB surrogate that picks the next instruction to try.
- :mod:`rrtool.reveal.scoring`: the weighted harmonic mean of relevance and diversity.

Nothing here loads the unlearned LLM: the search loop that drives these pieces lives elsewhere.
"""
