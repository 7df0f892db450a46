"""Benchmark: continuous batching against transformers' ``generate`` (not a pytest test).

Run alone on an idle machine: ``.venv/bin/python tests/bench_continuous.py [--dtype bfloat16]``.
Same prompts, one process, the offline SmolLM2; every row of the table decodes the same rows:

- ``generate``: transformers ``generate`` on left-padded batches (what a plain user would run;
  sampling through rrtool's seeded per-row sampler, the same compute as ``do_sample``);
- ``generate+prefix``: the same with the shared prompt prefix computed once per batch (rrtool's
  previous default);
- ``continuous``: rrtool's continuous batching (finished rows leave, next prompts take their
  slots; the shared prefix computed once per call);
- ``continuous bf16``: the same computing in bfloat16 over the fp32 weights
  (``compute_dtype: bfloat16``; its ``same`` column shows how many rows bf16 changes).

Workloads: NER answers (Reveal's one-shot chat queries over the built-in passages, greedy, 48
new tokens at most: many short rows), and sampled chat continuations of the built-in toxicity
prompt starts (temperature 1, top-p 0.9, 64 new tokens at most: rows finish early at varied
lengths). ``useful tok/s`` counts generated tokens up to and including EOS. The ``same`` column
says how many rows are token-identical to the ``generate`` row.

``--ceiling`` first prints the decode ceiling at the batch size: one forward step of that many
rows over an 80-token cache, no sampling, no scheduling (the most any engine can reach when
every row decodes), in both dtypes.
"""

from __future__ import annotations

import argparse
import time


def decode_step_seconds(batch: int, dtype: str, context: int = 80, steps: int = 12) -> float:
    """Seconds per decode step of ``batch`` rows over a ``context``-token cache (median of
    ``steps``): the model's forward only."""
    import statistics

    import torch

    from rrtool.generation.hf_inputs import cache_argument, new_cache
    from rrtool.models import load_model
    from rrtool.spec import ModelSpec

    model = load_model(
        ModelSpec(id="builtin:smollm2-135m-instruct", device="cpu", dtype=dtype)
    ).model
    gen = torch.Generator().manual_seed(0)
    cache, name = new_cache(model), cache_argument(model)  # filled in place
    with torch.inference_mode():
        model(torch.randint(0, 40000, (batch, context), generator=gen), **{name: cache})
        token = torch.randint(0, 40000, (batch, 1), generator=gen)
        times = []
        for _ in range(steps):
            began = time.perf_counter()
            model(token, **{name: cache})
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    import torch

    from rrtool.data import load_records
    from rrtool.generation.base import SamplingParams
    from rrtool.generation.hf import HFGenerator
    from rrtool.models import load_model
    from rrtool.queries import ner_queries
    from rrtool.spec import DataSource, ModelSpec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--samples", type=int, default=1, help="chat sampled: per prompt")
    parser.add_argument("--only", choices=["ner", "chat"], help="one workload")
    parser.add_argument("--ceiling", action="store_true", help="first: the decode-step ceiling")
    args = parser.parse_args()
    if args.ceiling:
        for dtype in ("float32", "bfloat16"):
            seconds = decode_step_seconds(args.batch, dtype)
            print(f"decode ceiling, batch {args.batch}, {dtype} weights: {seconds * 1000:.1f} "
                  f"ms/step, {args.batch / seconds:.0f} tok/s")  # fmt: skip

    handle = load_model(
        ModelSpec(id="builtin:smollm2-135m-instruct", device="cpu", dtype=args.dtype)
    )
    records = load_records(DataSource(path="builtin:ner_passages", format="universalner"))
    queries = ner_queries(records, ["person", "organization", "location", "date"], [], None)
    ner = [q.prompt for q in queries][: args.prompts]
    starts = [
        r["prompt"]["text"]
        for r in load_records(DataSource(path="builtin:toxicity_prompts", format="rtp"))
    ][: args.prompts]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"{args.dtype} weights"
    )
    workloads = [
        ("NER greedy", ner, SamplingParams(max_new_tokens=48, temperature=0.0)),
        (
            "chat sampled",
            starts,
            SamplingParams(
                max_new_tokens=64, temperature=1.0, top_p=0.9, num_samples=args.samples, seed=0
            ),
        ),
    ]
    if args.only:
        workloads = [w for w in workloads if w[0].lower().startswith(args.only)]
    engines = [
        ("generate", {"continuous": False, "cache_prefix": False}),
        ("generate+prefix", {"continuous": False, "cache_prefix": True}),
        ("continuous", {"continuous": True, "cache_prefix": True}),
        (
            "continuous bf16",
            {"continuous": True, "cache_prefix": True, "compute_dtype": "bfloat16"},
        ),
    ]
    for name, prompts, params in workloads:
        reference = None
        rates = {}
        for engine, options in engines:
            gen = HFGenerator(handle.model, handle.tokenizer, batch_size=args.batch, **options)
            began = time.perf_counter()
            out = gen.generate(prompts, params, chat=True)
            seconds = time.perf_counter() - began
            tokens = sum(c.tokens for row in out for c in row)
            reference = reference or out
            same = sum(a == b for a, b in zip(reference, out, strict=True))
            rates[engine] = tokens / seconds
            print(
                f"{name:<13} {engine:<16} {len(prompts):>3} prompts {tokens:>5} useful tokens "
                f"{seconds:6.1f} s {rates[engine]:6.1f} useful tok/s  same {same}/{len(out)}"
            )
        for engine in ("continuous", "continuous bf16"):
            print(
                f"{name:<13} {engine} / generate: {rates[engine] / rates['generate']:.2f}x, "
                f"/ generate+prefix: {rates[engine] / rates['generate+prefix']:.2f}x"
            )


if __name__ == "__main__":
    main()
