"""Stage 3: measure the base and the released model (``phase``), and turn a run's MLflow
records into a report (``collect`` reads, ``render`` writes HTML, Markdown or JSON)."""

# The robustness probes, by their `audit.probes` keys: `rrtool attack --probe` offers these
# (the CLI reads this without importing the spec; a test keeps it equal to the spec's fields).
PROBES = (
    "relearning",
    "relearning_ood",
    "elicitation",
    "membership",
    "quantization",
    "linear_probe",
)

# The relearning attack's sizes (forget examples fine-tuned on; Deeb & Roger 2024 report
# recovery against several): the probe trains at each, the plan counts their cost.
RELEARN_SIZES = (16, 64)


def attack_epochs(examples: int, per_step: int, steps: int) -> int:
    """Epochs over ``examples`` (``per_step`` to an optimiser step) that give a fine-tuning
    attack at least ``steps`` optimiser steps (``audit.probes.relearning_steps``): the same
    attack strength at every size, however few the examples."""
    per_epoch = max(1, -(-examples // per_step))
    return max(1, -(-steps // per_epoch))


# Which target kinds give the white-box probe labels (the plan warns for the others, the
# probe records why it did not run).
LINEAR_PROBE_KINDS = ("ner", "toxicity")
LINEAR_PROBE_NEEDS = (
    "the linear probe needs labelled entity passages (target.kind ner with universalner data) "
    "or toxicity continuations the oracle labels (target.kind toxicity); other target kinds "
    "give it no labels"
)
