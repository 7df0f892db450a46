"""Release: train LoRA modules (PEMs) on the current model and compose them exactly.

- ``lora``: the trained update as plain tensors (``LoraModule``), its safetensors file, and
  ``train_lora`` (PEFT on whatever weights the model has now; the model is left untouched).
- ``compose``: exact weight arithmetic in fp32 (``MasterWeights``), unmerged candidates whose
  weight changes in place (``ScaledAdapter``), and ``rebuild`` for export.
- ``analysis``: subspace similarity of two updates (the paper's Table 1).
- ``phase``: the Release phase (schedule, training, weight search, stopping, resume);
  ``weights``: the merge-weight rules (the schedules are ``rrtool.strategies``); ``evaluate``: the running scores;
  ``stack``: the recorded module stack; ``projection``, ``ext_sub``, ``cmd``,
  ``distributed``: the strategies' and launchers' own pieces.

Nothing here is imported by ``rrtool`` at start-up: these modules import torch.
"""
