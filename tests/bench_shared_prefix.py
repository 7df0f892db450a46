"""Benchmark: LoRA training with each micro-batch's shared prompt prefix run once, against
every row run whole (not a pytest test; run alone on an idle machine).

    .venv/bin/python tests/bench_shared_prefix.py [--examples 96] [--repeats 2]

The data is what Release trains on in the demo: NER queries of all five types on the built-in
passages (the one-shot conversation prompt; the gold entities as the answer), shuffled
together, with the demo spec's LoRA settings (rank 8, all linear layers, batch 4 x 2
accumulation, 192 tokens), at dropout 0 (the demo's) and 0.05 (the spec's default). Both ways
run in one process, alternately, so they share the machine's state. Reported: seconds per epoch
(min over repeats), tokens/s over every token of every example, and the relative difference of
the two updates dW (at dropout 0 it is float rounding; at 0.05 the head's tokens share one mask
and the rows' masks differ from the whole-row run's).
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    import torch

    from rrtool import shared_prefix
    from rrtool.data import load_records
    from rrtool.models import load_model
    from rrtool.queries import ner_queries
    from rrtool.release.lora import Example, encode_example, train_lora
    from rrtool.spec import DataSource, LoraSpec, ModelSpec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    handle = load_model(ModelSpec(id="builtin:smollm2-135m-instruct", device="cpu"))
    tok = handle.tokenizer
    records = load_records(DataSource(path="builtin:ner_passages", format="universalner"))
    types = ["person", "organization", "location", "date", "concept"]
    queries = ner_queries(records, types[:1], types[1:], None)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(queries), generator=generator).tolist()[: args.examples]
    examples = [
        Example(queries[i].prompt, json.dumps(queries[i].reference.get("entities", [])))
        for i in order
    ]
    tokens = sum(len(encode_example(tok, e, 192, True)[0]) for e in examples)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{len(examples)} examples, {tokens} tokens per epoch")  # fmt: skip

    def train(shared: bool, dropout: float) -> tuple[float, dict[str, torch.Tensor]]:
        shared_prefix.MIN_SHARED = 16 if shared else 10**9
        cfg = LoraSpec(r=8, alpha=16, dropout=dropout, target_modules="all-linear", epochs=1,
                       batch_size=4, gradient_accumulation=2, max_length=192)  # fmt: skip
        began = time.perf_counter()
        module = train_lora(handle.model, tok, examples, cfg, seed=0, kind="retain")
        seconds = time.perf_counter() - began
        return seconds, {n: module.delta(n) for n in module.names}

    def rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        num = sum(float((a[n] - b[n]).pow(2).sum()) for n in a)
        return (num / sum(float(b[n].pow(2).sum()) for n in b)) ** 0.5

    rows = []
    for dropout in (0.0, 0.05):
        times: dict[bool, list[float]] = {True: [], False: []}
        deltas: dict[bool, dict[str, torch.Tensor]] = {}
        for _ in range(args.repeats):
            for shared in (False, True):
                seconds, deltas[shared] = train(shared, dropout)
                times[shared].append(seconds)
        whole, shared_s = min(times[False]), min(times[True])
        rows.append((dropout, whole, shared_s, rel(deltas[True], deltas[False])))
    print("| dropout | whole rows s | shared prefix s | speed-up | tokens/s (whole -> shared) "
          "| dW relative difference |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for dropout, whole, shared_s, diff in rows:
        print(f"| {dropout} | {whole:.1f} | {shared_s:.1f} | {whole / shared_s:.2f}x | "
              f"{tokens / whole:.0f} -> {tokens / shared_s:.0f} | {diff:.2e} |")  # fmt: skip


if __name__ == "__main__":
    main()
