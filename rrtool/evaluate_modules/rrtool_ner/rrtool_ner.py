"""rrtool's NER measures as a local Hugging Face ``evaluate`` module (no hub needed).

    import evaluate
    from rrtool.evaluate_modules import module_path

    ner = evaluate.load(module_path("rrtool_ner"))
    ner.compute(
        predictions=['["Ada Lovelace"]', "The person is Ada Lovelace."],
        references=[["Ada Lovelace"], ["Ada Lovelace"]],
        entity_types=["person", "person"],
    )
    # {'macro_f1': 0.667, 'macro_robust_f1': 1.0, 'macro_mention_rate': 1.0,
    #  'parse_failure_rate': 0.5, 'person/f1': 0.667, ...}: the prose answer still names her

The numbers are exactly those of rrtool's ``ner_f1`` oracle (``aggregate``): strict F1 per
type and their mean, the robust F1 (names read from prose, lists and quotes), the share of
answers that still name a gold entity in any format (``mention_rate``; the forget measure of
rrtool's audit), echo, parse-failure and empty rates. Give ``prompts`` (rrtool's one-shot
queries, or any text holding the passage after "Text: ") to set answers that merely repeat the
passage apart as echoes.
"""

from __future__ import annotations

import datasets
import evaluate
from rrtool_oracles.ner_f1 import NerF1Oracle

from rrtool.oracles.contract import Sample

_CITATION = """@misc{rrtool, title={rrtool: Reveal and Release unlearning toolkit}}"""


class RrtoolNer(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=(
                "predictions: the model's answers (str); references: the gold entities of the "
                "asked type (list of str); entity_types (keyword): the type asked, one per "
                "answer; prompts (keyword, optional): the queries, for echo detection; "
                "types (keyword, optional): report these types only."
            ),
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(
        self,
        predictions: list[str],
        references: list[list[str]],
        entity_types: list[str] | None = None,
        prompts: list[str] | None = None,
        types: list[str] | None = None,
    ) -> dict[str, float]:
        if entity_types is None or len(entity_types) != len(predictions):
            raise ValueError(
                "rrtool_ner: give entity_types, the entity type asked, one per prediction"
            )
        if prompts is not None and len(prompts) != len(predictions):
            raise ValueError("rrtool_ner: prompts must have one entry per prediction")
        samples = [
            Sample(
                id=str(i),
                prompt=prompts[i] if prompts is not None else "",
                completion=answer,
                reference={"type": entity_types[i], "entities": list(gold)},
            )
            for i, (answer, gold) in enumerate(zip(predictions, references, strict=True))
        ]
        oracle = NerF1Oracle(types=types)
        return dict(oracle.aggregate(samples, oracle.score(samples)))
