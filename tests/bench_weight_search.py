"""Benchmark: evaluations the merge-weight search needs, against a 10-point grid (not a test).

Run on an idle machine: ``.venv/bin/python tests/bench_weight_search.py``.
On the offline SmolLM2: a forget module is trained (gold Person answers of the built-in NER
passages as a stand-in for Reveal's forget data; r 8, all linear layers, one epoch), attached
unmerged (``ScaledAdapter``), and mu is chosen by the default rule (forget at least 90% of what
remains, else the best trade-off, within the per-step utility floor; the forget score is the
share of Person answers that still name a gold person, in any format) on 12 evaluation
passages, three ways: the search with
budgets 4 and 8, and a grid of 10 weights (0.2, 0.4, ..., 2.0) evaluated in full. Every
evaluation is cached by weight, so the rows report distinct model evaluations.
"""

from __future__ import annotations

import json
import time


def main() -> None:
    from rrtool.data import load_records
    from rrtool.generation.base import SamplingParams
    from rrtool.generation.factory import make_generator
    from rrtool.models import load_model
    from rrtool.oracles.contract import Sample
    from rrtool.oracles.registry import create_oracle
    from rrtool.queries import ner_queries
    from rrtool.release.compose import ScaledAdapter
    from rrtool.release.lora import Example, train_lora
    from rrtool.release.weights import Start, _select, judge, search_weight
    from rrtool.spec import DataSource, LoraSpec, ModelSpec, RulesSpec, WeightSearchSpec
    from rrtool.tasks import prompt_text

    handle = load_model(ModelSpec(id="builtin:smollm2-135m-instruct", device="cpu"))
    records = load_records(DataSource(path="builtin:ner_passages", format="universalner"))
    types = ["person", "organization", "location", "date", "concept"]
    queries = [q for q in ner_queries(records, types, [], None) if "entities" in q.reference]
    passages = list(dict.fromkeys(q.context for q in queries))
    train = [q for q in queries if q.type == "person" and q.context in passages[12:]]
    evaluation = [q for q in queries if q.context in passages[:12]]
    examples = [Example(q.prompt, json.dumps(q.reference["entities"])) for q in train]
    cfg = LoraSpec(r=8, alpha=16, target_modules="all-linear", epochs=1, batch_size=4,
                   gradient_accumulation=2, max_length=192)  # fmt: skip
    module = train_lora(handle.model, handle.tokenizer, examples, cfg, seed=0, kind="forget")
    gen = make_generator("hf", handle, batch_size=16)
    oracle = create_oracle("ner_f1", {})
    params = SamplingParams(max_new_tokens=48, temperature=0.0)

    def scores() -> tuple[float, float]:
        out = gen.generate([q.prompt for q in evaluation], params, chat=True)
        f1 = {}
        for t in types:
            picked = [(q, o) for q, o in zip(evaluation, out, strict=True) if q.type == t]
            samples = [
                Sample(q.id, prompt_text(q.prompt), o[0].text, q.reference) for q, o in picked
            ]
            metrics = oracle.aggregate(samples, oracle.score(samples))
            f1[t] = metrics.get(f"{t}/mention_rate" if t == "person" else f"{t}/f1", 0.0)
        return f1["person"], sum(f1[t] for t in types[1:]) / 4

    s0, u0 = scores()
    print(f"base: person named {s0:.3f}, retained F1 {u0:.3f}; {len(evaluation)} queries per eval")
    start = Start(s0, u0, u0, u0)
    cache: dict[float, tuple[float, float]] = {}
    rules = RulesSpec()
    with ScaledAdapter(handle.model, module, 0.0) as adapter:

        def evaluate(weight: float) -> tuple[float, float]:
            if weight not in cache:
                adapter.set_weight(-weight)
                cache[weight] = scores()
            return cache[weight]

        for budget in (4, 8):
            cache.clear()
            began = time.perf_counter()
            result = search_weight("mu", evaluate, start, WeightSearchSpec(budget=budget), rules)
            print(
                f"search, budget {budget}: {len(cache)} evaluations, {time.perf_counter() - began:.0f} s"
                f" -> mu {result.weight:.4g} ({result.reason}: person {result.s:.3f}, "
                f"retained {result.u:.3f})"
            )
        cache.clear()
        began = time.perf_counter()
        grid = [round(0.2 * i, 1) for i in range(1, 11)]
        for weight in grid:
            evaluate(weight)
        candidates = []
        for w in grid:
            candidate = judge("mu", *cache[w], start, rules)
            candidate.weight = w
            candidates.append(candidate)
        chosen, reason = _select("mu", candidates, start)
        print(
            f"grid of 10: {len(cache)} evaluations, {time.perf_counter() - began:.0f} s -> "
            f"mu {chosen.weight:.4g} ({reason}: person {chosen.s:.3f}, retained {chosen.u:.3f})"
        )


if __name__ == "__main__":
    main()
