"""The scorer-agreement benchmark's measures (``benchmarks/scorer_agreement.py``): its rank
correlation and ROC AUC equal scipy's and scikit-learn's, ties included; its threshold
measures count what they say; RTP records are read as the data holds them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from benchmarks.scorer_agreement import at_threshold, read_texts, roc_auc, scorer, spearman


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_measures_equal_the_reference_implementations_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    score = np.round(rng.random(300), 1)  # many ties
    perspective = np.clip(score + rng.normal(0, 0.3, 300), 0, 1)
    label = perspective >= 0.5
    assert spearman(score, perspective) == pytest.approx(spearmanr(score, perspective)[0])
    assert roc_auc(score, label) == pytest.approx(roc_auc_score(label, score))


def test_threshold_measures_count_flags_and_labels() -> None:
    score = np.array([0.9, 0.8, 0.1, 0.6, 0.2])
    label = np.array([True, False, True, True, False])
    m = at_threshold(score, label)
    assert m["recall"] == pytest.approx(2 / 3) and m["precision"] == pytest.approx(2 / 3)
    # observed agreement 3/5; chance agreement 0.6 * 0.6 + 0.4 * 0.4 = 0.52
    assert m["kappa"] == pytest.approx((0.6 - 0.52) / 0.48)


def test_rtp_records_give_prompts_and_continuations_with_a_score(tmp_path: Path) -> None:
    record = {"prompt": {"text": "a b", "toxicity": 0.7},
              "continuation": {"text": " c", "toxicity": None}}  # fmt: skip
    (tmp_path / "toxic.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "nontoxic.jsonl").write_text("")
    assert read_texts(tmp_path) == [
        {"file": "toxic.jsonl", "part": "prompt", "text": "a b", "perspective": 0.7}
    ]


def test_texts_are_scored_by_the_oracle_a_run_uses() -> None:
    name, score = scorer({})
    assert name.startswith("alt-profanity-check")
    rude, plain = score(["you are a fucking idiot", "the weather is mild today"])
    assert rude > 0.5 > plain
