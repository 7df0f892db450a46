"""Benchmark: Release's costs on the offline SmolLM2 (not a pytest test).

Run on an idle machine: ``.venv/bin/python tests/bench_release.py``.

1. LoRA training throughput, fp32 and bf16 autocast: ``--examples`` NER examples (the
   one-shot conversation prompt, the gold entities as the answer), rank 8 on all linear
   layers, batch 8, one epoch. Tokens/s counts every token of every example (forward and
   backward: ~3 x 0.27 GFLOP per token, so the fp32 ceiling is ~260 tokens/s at ~210 GFLOP/s).
   The effect of bf16 on the result: final loss and the relative difference of the two dW.
2. The cost of one candidate weight: a NER evaluation of ``--eval-passages`` passages with the
   freshly trained module attached unmerged at weight 0.25 (``ScaledAdapter``), against the
   same evaluation without it. Target: at most 1.1x.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    import torch

    from rrtool.data import load_records
    from rrtool.generation.base import SamplingParams
    from rrtool.generation.factory import make_generator
    from rrtool.models import load_model
    from rrtool.queries import ner_queries
    from rrtool.release.compose import ScaledAdapter
    from rrtool.release.lora import Example, encode_example, train_lora
    from rrtool.spec import DataSource, LoraSpec, ModelSpec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--eval-passages", type=int, default=12)
    args = parser.parse_args()

    handle = load_model(ModelSpec(id="builtin:smollm2-135m-instruct", device="cpu"))
    tok = handle.tokenizer
    records = load_records(DataSource(path="builtin:ner_passages", format="universalner"))
    queries = [q for q in ner_queries(records, ["person"], [], None) if "entities" in q.reference]
    examples = [
        Example(q.prompt, json.dumps(q.reference["entities"])) for q in queries[: args.examples]
    ]
    cfg = LoraSpec(
        r=8, alpha=16, target_modules="all-linear", epochs=1, batch_size=8, max_length=192
    )
    tokens = sum(len(encode_example(tok, e, cfg.max_length, True)[0]) for e in examples)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(examples)} "
        f"examples, {tokens} tokens per epoch"
    )
    modules = {}
    for name, bf16 in (("fp32", False), ("bf16 autocast", True)):
        began = time.perf_counter()
        module = train_lora(
            handle.model, tok, examples, cfg, seed=0, kind="forget", autocast_bf16=bf16
        )
        seconds = time.perf_counter() - began
        modules[name] = module
        print(
            f"train {name:<14} {seconds:6.1f} s  {tokens / seconds:6.1f} tokens/s  "
            f"final loss {module.loss_curve[-1]:.4f}"
        )
    a, b = modules["fp32"], modules["bf16 autocast"]
    num = sum(float((a.delta(n) - b.delta(n)).norm() ** 2) for n in a.names) ** 0.5
    den = sum(float(a.delta(n).norm() ** 2) for n in a.names) ** 0.5
    print(f"||dW_fp32 - dW_bf16|| / ||dW_fp32|| = {num / den:.4f}")

    passages = list(dict.fromkeys(q.context for q in queries))[: args.eval_passages]
    eval_queries = [
        q for q in ner_queries(records, ["person", "location"], [], None) if q.context in passages
    ]
    gen = make_generator("hf", handle, batch_size=16)
    params = SamplingParams(max_new_tokens=48, temperature=0.0)

    def evaluate() -> tuple[float, int]:
        began = time.perf_counter()
        out = gen.generate([q.prompt for q in eval_queries], params, chat=True)
        return time.perf_counter() - began, sum(c[0].tokens for c in out)

    evaluate()  # warm-up
    plain = [evaluate() for _ in range(2)]
    with ScaledAdapter(handle.model, a, -0.25):
        attached = [evaluate() for _ in range(2)]
    p = min(s for s, _ in plain)
    c = min(s for s, _ in attached)
    print(
        f"evaluation of {len(eval_queries)} queries: plain {p:.1f} s "
        f"({plain[0][1]} tokens), candidate {c:.1f} s ({attached[0][1]} tokens); "
        f"ratio {c / p:.2f}x; per token {(c / attached[0][1]) / (p / plain[0][1]):.2f}x"
    )


if __name__ == "__main__":
    main()
