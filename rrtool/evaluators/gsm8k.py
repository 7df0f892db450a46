"""GSM8K accuracy, few-shot, with strict and flexible answer extraction.

Follows lm-evaluation-harness's ``gsm8k`` task: the prompt is ``shots`` solved problems as
``Question: ...\\nAnswer: <worked answer ending in #### N>`` blocks, then the question;
generation is greedy and stops at the next ``Question:``.

- **strict**: the number after ``#### `` in the completion (none = wrong);
- **flexible**: the last number anywhere in the completion.

Both are compared to the gold ``#### N`` after removing ``,``, ``$`` and a trailing ``.``.
The shots are the first ``shots`` records of the evaluation data, which are then not
evaluated (no question is ever its own example).

Both accuracies carry a 95% bootstrap interval (:mod:`rrtool.evaluators.bootstrap`) over the
evaluated questions: a replicate resamples the questions with replacement (each with its
strict and flexible correctness) and recomputes the two accuracies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from rrtool.evaluators.base import Evaluation
from rrtool.evaluators.bootstrap import bootstrap
from rrtool.tasks import gsm8k_final_answer

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
STOP = ("Question:", "\n\n\n")


def normalise(answer: str | None) -> str | None:
    if answer is None:
        return None
    out = answer.strip().replace(",", "").replace("$", "")
    return out[:-1] if out.endswith(".") else out


def extract_strict(completion: str) -> str | None:
    match = STRICT.search(completion)
    return normalise(match.group(1)) if match else None


def extract_flexible(completion: str) -> str | None:
    matches = FLEXIBLE.findall(completion)
    if not matches:
        return None
    last = matches[-1]
    return normalise(last[0] or last[1])


def few_shot_prompt(question: str, shots: Sequence[dict[str, Any]]) -> str:
    blocks = [f"Question: {s['question']}\nAnswer: {s['answer']}" for s in shots]
    blocks.append(f"Question: {question}\nAnswer:")
    return "\n\n".join(blocks)


def split_shots(
    records: Sequence[dict[str, Any]], shots: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(exemplars, evaluated records): the first ``shots`` records are the exemplars."""
    if len(records) <= shots:
        raise ValueError(
            f"gsm8k: {len(records)} records cannot give {shots} shots and something to evaluate"
        )
    return list(records[:shots]), list(records[shots:])


def _accuracies(correct: Sequence[tuple[bool, bool]]) -> dict[str, float]:
    n = len(correct)
    return {
        "strict_accuracy": sum(s for s, _ in correct) / n if n else 0.0,
        "flexible_accuracy": sum(f for _, f in correct) / n if n else 0.0,
    }


def score(
    completions: Sequence[str],
    golds: Sequence[str | None],
    prompts: Sequence[str] = (),
    *,
    seed: int = 0,
) -> Evaluation:
    """Accuracy of completions against gold final answers (``#### N`` values), with bootstrap
    intervals over the questions seeded by ``seed``."""
    if len(completions) != len(golds):
        raise ValueError(f"gsm8k: {len(completions)} completions for {len(golds)} answers")
    correct: list[tuple[bool, bool]] = []  # (strict, flexible) per question
    answers = []
    for i, (completion, gold) in enumerate(zip(completions, golds, strict=True)):
        target = normalise(gold)
        s, f = extract_strict(completion), extract_flexible(completion)
        correct.append((s is not None and s == target, f is not None and f == target))
        answers.append(
            {
                "id": str(i),
                "prompt": prompts[i] if prompts else "",
                "completion": completion,
                "reference": {"answer": gold},
                "score": float(correct[-1][1]),
            }
        )
    n = len(golds)
    metrics = _accuracies(correct)
    result = bootstrap(correct, _accuracies, seed=seed)
    definition = (
        "exact match of the final number: strict = after '#### ', flexible = the last number "
        "in the completion; ',', '$' and a trailing '.' removed"
    )
    return Evaluation(
        "gsm8k",
        metrics,
        definition,
        "answer extraction (lm-eval gsm8k)",
        n,
        answers,
        {k: list(v) for k, v in result.intervals.items()},
        result.replicates,
        result.units,
    )


def evaluate(
    generate: Callable[[list[str]], list[str]],
    records: Sequence[dict[str, Any]],
    *,
    shots: int = 5,
    seed: int = 0,
) -> Evaluation:
    """Few-shot GSM8K through ``generate`` (prompts -> greedy completions, stopping at STOP);
    ``seed`` seeds the bootstrap over the questions."""
    exemplars, evaluated = split_shots(records, shots)
    prompts = [few_shot_prompt(r["question"], exemplars) for r in evaluated]
    completions = generate(prompts)
    golds = [gsm8k_final_answer(r["answer"]) for r in evaluated]
    result = score(completions, golds, [r["question"] for r in evaluated], seed=seed)
    return replace(result, definition=f"{shots}-shot; {result.definition}")
