"""Benchmark: generation throughput of the HF backend on the offline SmolLM2 (not a pytest test).

Run on an idle machine: ``.venv/bin/python tests/bench_generation.py [--prompts 64]``.
The prompts are Reveal's NER queries over the built-in passages (one-shot chat conversation),
decoded greedily with ``--max-new-tokens``. Rows:

- ``loop``: one prompt at a time through the same backend (batch size 1);
- ``batched B``: the backend with ``batch_size = B`` (left padding, longest-first ordering);
- ``sampled``: temperature 1, top-p 0.9, 4 samples per prompt, batch 32.

Tokens are the *useful* generated tokens (up to and including EOS); the compute ceiling uses
~2 x 135M = 0.27 GFLOP per token against the dev machine's ~210 GFLOP/s fp32 (see
``../shared/docs/environment.md``), i.e. ~780 tokens/s.
"""

from __future__ import annotations

import argparse
import time

GFLOP_PER_TOKEN = 0.27
CEILING_GFLOPS = 210.0


def main() -> None:
    import torch

    from rrtool.data import load_records
    from rrtool.generation.base import SamplingParams
    from rrtool.generation.factory import make_generator
    from rrtool.models import load_model
    from rrtool.queries import ner_queries
    from rrtool.spec import DataSource, ModelSpec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--loop-prompts", type=int, default=16, help="prompts for the loop row")
    args = parser.parse_args()

    handle = load_model(
        ModelSpec(id="builtin:smollm2-135m-instruct", device="cpu", dtype=args.dtype)
    )
    records = load_records(DataSource(path="builtin:ner_passages", format="universalner"))
    queries = ner_queries(records, ["person", "organization", "location", "date"], [], None)
    prompts = [q.prompt for q in queries][: args.prompts]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(prompts)} prompts,"
        f" max_new_tokens {args.max_new_tokens}, greedy, {args.dtype} weights"
    )
    ceiling = CEILING_GFLOPS / GFLOP_PER_TOKEN

    from rrtool.generation.base import encode_prompt

    def row(
        name: str, batch: int, subset: list, params: SamplingParams, chat: bool = True
    ) -> float:
        gen = make_generator("hf", handle, batch_size=batch)
        began = time.perf_counter()
        out = gen.generate(subset, params, chat=chat)
        seconds = time.perf_counter() - began
        tokens = sum(c.tokens for completions in out for c in completions)
        rows = 1 if params.greedy else params.num_samples
        prompt = rows * sum(len(encode_prompt(handle.tokenizer, p, chat=chat)) for p in subset)
        rate = tokens / seconds
        both = (tokens + prompt) / seconds
        print(
            f"{name:<16} {len(subset):>4} prompts {prompt:>6} prompt + {tokens:>5} new tokens "
            f"{seconds:6.1f} s  new {rate:6.1f} tok/s  all {both:6.1f} tok/s "
            f"({both / ceiling:4.0%} of the fp32 ceiling)"
        )
        return rate

    greedy = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    loop = row("NER loop", 1, prompts[: args.loop_prompts], greedy)
    best = 0.0
    for batch in args.batches:
        best = max(best, row(f"NER batch {batch}", batch, prompts, greedy))
    sampled = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.9, num_samples=4, seed=0
    )
    row("NER sampled x4", 32, prompts[: max(1, len(prompts) // 4)], sampled)
    print(f"NER answers, best batched / loop: {best / loop:.1f}x (new tokens per second)")
    # Decode-bound: short plain-text prompt starts, sampled, long continuations.
    starts = [
        r["prompt"]["text"]
        for r in load_records(DataSource(path="builtin:toxicity_prompts", format="rtp"))
    ][: args.prompts]
    long = SamplingParams(max_new_tokens=args.decode_tokens, temperature=1.0, top_p=0.9, seed=0)
    one = row("decode loop", 1, starts[:4], long, chat=False)
    fastest = max(row(f"decode batch {b}", b, starts, long, chat=False) for b in (16, 64))
    print(f"continuations, best batched / loop: {fastest / one:.1f}x (new tokens per second)")


if __name__ == "__main__":
    main()
