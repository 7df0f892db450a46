"""Memory and time estimates from a model's config alone (``rrtool.estimate``)."""

from __future__ import annotations

import json

import pytest

from rrtool.estimate import Shape, estimate
from tests.conftest import tiny_spec

LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
}
LLAMA2_70B = {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
              "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000}  # fmt: skip
COUNTS = {"lora_r": 8, "batch": 4, "max_length": 192, "generation_batch": 16,
          "max_new_tokens": 48, "generated_tokens": 100_000, "training_steps": 100,
          "tokens_per_step": 8 * 192}  # fmt: skip


def test_parameter_counts_match_the_published_models() -> None:
    assert Shape.from_config(LLAMA2_7B).parameters == 6_738_415_616
    assert Shape.from_config(LLAMA2_70B).parameters == 68_976_648_192


def test_7b_and_70b_figures() -> None:
    seven = estimate(Shape.from_config(LLAMA2_7B), "bfloat16", **COUNTS)
    seventy = estimate(Shape.from_config(LLAMA2_70B), "bfloat16", **COUNTS)
    m7, m70 = seven["memory_gib"], seventy["memory_gib"]
    assert m7["weights"] == pytest.approx(6_738_415_616 * 2 / 1024**3, rel=1e-3)  # 12.6 GiB
    assert m70["weights"] == pytest.approx(128.5, rel=1e-2)
    # fp32 masters of every decoder Linear: twice the bf16 weights of those layers.
    assert m7["fp32_masters"] == pytest.approx(2 * m7["weights"] * (1 - 0.039), rel=0.01)
    assert m7["lora_training_state"] < 0.5 and m7["peak"] > m7["weights"] + m7["fp32_masters"]
    # GQA (8 KV heads of 64) keeps the 70B KV cache near 7B's despite 2.5x the layers.
    assert m70["generation_kv_cache"] < 1.5 * m7["generation_kv_cache"]
    assert seventy["seconds"]["generation"] == pytest.approx(
        10.24 * seven["seconds"]["generation"], rel=0.01
    )
    stated = estimate(Shape.from_config(LLAMA2_7B), "bfloat16", **COUNTS, throughput=1000.0)
    assert stated["seconds"]["generation"] == pytest.approx(100.0)
    assert stated["throughput_source"] == "stated"


def test_the_plan_estimates_a_local_checkpoint_from_its_config(invoke, write_spec, tmp_path):
    from transformers import LlamaConfig

    checkpoint = tmp_path / "ckpt"
    LlamaConfig(**LLAMA2_7B).save_pretrained(checkpoint)
    spec = write_spec(tiny_spec(model={"id": str(checkpoint), "device": "cpu"}))
    result = invoke("plan", str(spec), "--json", "--throughput", "50")
    assert result.exit_code == 0, result.stderr
    resources = json.loads(result.stdout)["resources"]
    assert resources["parameters"] == 6_738_415_616 and resources["dtype"] == "float32"
    assert resources["memory_gib"]["weights"] == pytest.approx(25.1, rel=0.01)
    assert resources["throughput_tokens_per_s"] == 50.0
    text = invoke("plan", str(spec)).stdout
    assert "estimate (6.74B parameters, float32): peak tensor memory" in text
