"""Benchmark: wall time of one weight-search candidate on the demo spec (not a pytest test).

Run alone on an idle machine: ``.venv/bin/python tests/bench_candidate.py``.
``specs/person_ner.yaml`` on the offline SmolLM2, Release's evaluation suite (the search split,
``release.search.eval_size`` passages, forget and retained types), answer cache off. Two
candidates, each timed under every engine:

- ``base``: the base model (weight 0), which passes the per-step utility floor;
- ``collapsed``: a random rank-8 LoRA on every linear layer at a weight that wrecks the model
  (what the top rungs of the weight ladder often are).

Engines: ``generate`` (transformers generate, every candidate measured fully: the previous
default), ``continuous`` (continuous batching), ``+early`` (with early rejection at the
default 0.95 confidence), ``+bf16`` (generation in bfloat16 over the fp32 weights). The
``decision`` column is the per-step floor's verdict (u >= 0.5 x base u); it must agree
across engines.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    import torch
    from rich.console import Console

    from rrtool.context import RunContext
    from rrtool.release.compose import ScaledAdapter
    from rrtool.release.evaluate import Evaluator
    from rrtool.release.lora import LoraModule
    from rrtool.spec_loader import load_spec
    from rrtool.tracking import Tracker, resolve_store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="specs/person_ner.yaml")
    parser.add_argument("--weight", type=float, default=4.0, help="the collapsed candidate's")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--engine", action="append", help="only these engines (repeatable)")
    args = parser.parse_args()

    engines = [
        ("generate", False, "model", "null"),
        ("continuous", True, "model", "null"),
        ("continuous+early", True, "model", "0.95"),
        ("continuous+early+bf16", True, "bfloat16", "0.95"),
    ]
    if args.engine:
        engines = [e for e in engines if e[0] in args.engine]
    work = Path(tempfile.mkdtemp(prefix="bench-candidate-"))
    store = resolve_store(f"sqlite:///{work / 'mlflow.db'}")
    console = Console(stderr=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, spec {args.spec}")
    floor = None
    module = None
    for name, continuous, dtype, early in engines:
        overrides = [
            "reveal.generation.answer_cache=false",
            f"reveal.generation.compute_dtype={dtype}",
            f"release.search.early_reject_confidence={early}",
            *args.overrides,
        ]
        loaded = load_spec(args.spec, overrides)
        tracker = Tracker.start(store, "bench", name, {})
        ctx = RunContext(loaded, tracker, console, work / name)
        evaluator = Evaluator(ctx)
        model = ctx.model().model
        if module is None:
            generator = torch.Generator().manual_seed(0)
            names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
            names = [n for n in names if "lm_head" not in n]
            shapes = {n: model.get_submodule(n).weight.shape for n in names}
            module = LoraModule(
                {n: torch.randn(8, s[1], generator=generator) * 0.05 for n, s in shapes.items()},
                {n: torch.randn(s[0], 8, generator=generator) * 0.05 for n, s in shapes.items()},
                8, 16.0, "all-linear", "forget",
            )  # fmt: skip
        engine = evaluator.suite._generator()  # built once per model, then reused
        engine.continuous = engine.continuous and continuous
        with ScaledAdapter(model, module, 0.0) as adapter:
            for candidate, weight in (("base", 0.0), ("collapsed", args.weight)):
                adapter.set_weight(weight)
                if floor is None:
                    floor = 0.5 * evaluator().u  # the per-step floor of the demo's rules
                began = time.perf_counter()
                scores = evaluator(reject_below=floor)
                seconds = time.perf_counter() - began
                decision = "accept" if scores.u >= floor else "reject"
                s = "not measured" if scores.decided_early else f"{scores.s:.3f}"
                print(
                    f"{candidate:<10} {name:<22} {seconds:6.1f} s  prompts {scores.prompts:>4}  "
                    f"u {scores.u:.3f}  s {s:<12} {decision}"
                    f"{' (early)' if scores.decided_early else ''}"
                )
        ctx.reload_model()


if __name__ == "__main__":
    main()
