"""Memory and time a run will need, from the model's config alone (no weights).

Memory (peak of one process, the largest phase):

- weights: parameters x bytes of the dtype the model is loaded in;
- fp32 masters: Release composes modules into fp32 copies of the targeted Linear weights
  (``release.compose.MasterWeights``), 4 bytes per targeted parameter;
- LoRA training state: the LoRA parameters (r x (in + out) per targeted Linear) in fp32 with
  their gradients and Adam's two moments (16 bytes each);
- training activations per micro-batch, without recomputation (Korthikanti et al. 2022:
  ``s b h (34 + 5 a s / h)`` bytes per layer in 16-bit, doubled in fp32) plus the fp32 logits
  of the loss (``b s V x 4``), with ``s = release.lora.max_length``, ``b`` the rows of one
  forward (``lora.batch_size``, or fewer under ``lora.max_forward_tokens``);
- generation KV cache: ``2 x layers x kv heads x head dim x (max_length + max_new_tokens) x
  generation batch x bytes``.

The peak adds weights, masters and LoRA state to the larger of training activations and
generation. Time: generated tokens at a throughput, and LoRA steps at a step time, both
scaled by parameter count from SmolLM2-135M on 2 CPU cores (75 new tokens/s at batch 20, 4.5 s
per step of 8 x 128 tokens; ``docs/evaluation.md``), or the throughput the user states.
Estimates, not measurements: the plan says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3
REFERENCE_PARAMS = 134_515_008  # SmolLM2-135M
REFERENCE_TOKENS_PER_S = 75.0  # greedy, batch 20, 2 CPU cores
REFERENCE_STEP_S = 4.5  # one LoRA step on 8 x 128 tokens, 2 CPU cores
REFERENCE_STEP_TOKENS = 8 * 128
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a decoder-only transformer config."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Shape:
        heads = int(config["num_attention_heads"])
        return cls(
            hidden=int(config["hidden_size"]),
            intermediate=int(config.get("intermediate_size") or 4 * config["hidden_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of the Linear layers of one decoder layer (Llama-style)."""
        h, kv = self.hidden, self.hidden * self.kv_heads // self.heads
        i = self.intermediate
        return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]

    @property
    def parameters(self) -> int:
        per_layer = sum(a * b for a, b in self.linears()) + 2 * self.hidden
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + self.layers * per_layer + self.hidden + head


def estimate(
    shape: Shape,
    dtype: str,
    *,
    lora_r: int,
    batch: int,
    max_length: int,
    generation_batch: int,
    max_new_tokens: int,
    generated_tokens: int,
    training_steps: int,
    tokens_per_step: int,
    throughput: float | None = None,
) -> dict[str, Any]:
    """The memory components (GiB), the peak, and the time (seconds) of the counts given."""
    size = DTYPE_BYTES.get(dtype, 4)
    targeted = shape.layers * sum(a * b for a, b in shape.linears())
    lora = shape.layers * sum(lora_r * (a + b) for a, b in shape.linears())
    h, a, s, b = shape.hidden, shape.heads, max_length, batch
    activations = shape.layers * s * b * h * (34 + 5 * a * s / h) * (2 if size == 4 else 1)
    logits = b * s * shape.vocab * 4
    head_dim = shape.hidden // shape.heads
    kv = 2 * shape.layers * shape.kv_heads * head_dim * (s + max_new_tokens) * generation_batch
    memory = {
        "weights": shape.parameters * size / GIB,
        "fp32_masters": targeted * 4 / GIB,
        "lora_training_state": lora * 16 / GIB,
        "training_activations": (activations + logits) / GIB,
        "generation_kv_cache": kv * size / GIB,
    }
    fixed = memory["weights"] + memory["fp32_masters"] + memory["lora_training_state"]
    memory["peak"] = fixed + max(memory["training_activations"], memory["generation_kv_cache"])
    scale = shape.parameters / REFERENCE_PARAMS
    rate = throughput or REFERENCE_TOKENS_PER_S / scale
    step = REFERENCE_STEP_S * scale * tokens_per_step / REFERENCE_STEP_TOKENS
    return {
        "parameters": shape.parameters,
        "dtype": dtype,
        "memory_gib": {k: round(v, 3) for k, v in memory.items()},
        "seconds": {
            "generation": generated_tokens / rate,
            "training": training_steps * step,
        },
        "throughput_tokens_per_s": rate,
        "throughput_source": "stated" if throughput else "SmolLM2-135M on 2 CPU cores, scaled",
    }
