"""The vLLM backend (optional, NVIDIA GPUs): same interface, vLLM's continuous batching.

vLLM is imported in :class:`VLLMGenerator`'s constructor, never at module import, so this module
loads (and its error messages work) where vLLM is not installed. Prompts are formatted and
tokenised here with the shared :func:`~rrtool.generation.base.encode_prompt` and sent as token
ids, so both backends give the model exactly the same input for the same prompt.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rrtool.errors import UserError
from rrtool.generation.base import (
    Completion,
    GenerationStats,
    Prompt,
    SamplingParams,
    check_nonempty,
    encode_prompt,
    first_stop,
    row_seed,
    vllm_missing_message,
)


class VLLMGenerator:
    """The :class:`~rrtool.generation.base.Generator` over a ``vllm.LLM`` engine.

    ``embedding_weight`` (the model's input-embedding matrix, e.g. from the HF model) is needed
    for :meth:`generate_from_embeds` and :meth:`embedding_norm`: vLLM does not expose its own.
    Prompts reach vLLM in chunks of ``progress_chunk`` only so that ``progress`` advances; vLLM
    batches each chunk itself (its ``max_num_seqs`` engine argument bounds a step).
    Extra keyword arguments go to ``vllm.LLM`` (engine arguments such as ``max_model_len``).
    """

    def __init__(
        self,
        model_path: str,
        *,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        seed: int = 0,
        enable_prompt_embeds: bool = True,
        embedding_weight: torch.Tensor | None = None,
        progress_chunk: int = 256,
        **engine_kwargs: Any,
    ) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise UserError(vllm_missing_message())
        from vllm import LLM

        args: dict[str, Any] = {
            "model": model_path,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "seed": seed,
            **engine_kwargs,
        }
        self.prompt_embeds_enabled = False
        if enable_prompt_embeds:
            try:
                self.llm = LLM(**args, enable_prompt_embeds=True)
                self.prompt_embeds_enabled = True
            except TypeError as exc:
                # vLLM releases before prompt-embedding inputs reject the engine argument.
                if "enable_prompt_embeds" not in str(exc):
                    raise
                self.llm = LLM(**args)
        else:
            self.llm = LLM(**args)
        self.tokenizer = self.llm.get_tokenizer()
        self.embedding_weight = (
            None if embedding_weight is None else embedding_weight.detach().to("cpu")
        )
        self.progress_chunk = max(1, progress_chunk)
        self.stats = GenerationStats()

    # ---------------------------------------------------------------- public API
    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        *,
        chat: bool = True,
        progress: Callable[[int], None] | None = None,
        drafts: Sequence[str | None] | None = None,  # vLLM decodes fast enough: not used
    ) -> list[list[Completion]]:
        encoded = [encode_prompt(self.tokenizer, p, chat=chat) for p in prompts]
        check_nonempty(encoded, prompts)
        inputs = [{"prompt_token_ids": ids} for ids in encoded]
        return self._run(inputs, params, progress)

    def generate_from_embeds(
        self,
        prefix_embeds: torch.Tensor,
        prompts: Sequence[str],
        params: SamplingParams,
        *,
        chat: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]:
        if not self.prompt_embeds_enabled:
            raise NotImplementedError(
                "this vLLM build does not accept prompt embeddings (needs a vLLM release with "
                "`enable_prompt_embeds`); use the hf backend for soft-prompt decoding"
            )
        weight = self._embedding_weight()
        if prefix_embeds.dim() != 2 or prefix_embeds.shape[1] != weight.shape[1]:
            raise ValueError(
                f"prefix_embeds must be (n_soft, {weight.shape[1]}); "
                f"got {tuple(prefix_embeds.shape)}"
            )
        prefix = prefix_embeds.detach().to(device="cpu", dtype=weight.dtype)
        inputs = []
        for prompt in prompts:
            ids = torch.tensor(encode_prompt(self.tokenizer, prompt, chat=chat), dtype=torch.long)
            embeds = torch.cat([prefix, torch.nn.functional.embedding(ids, weight)])
            inputs.append({"prompt_embeds": embeds})
        return self._run(inputs, params, progress)

    def last_token_features(
        self,
        prompts: Sequence[str],
        *,
        prefix_embeds: torch.Tensor | None = None,
        batch_size: int | None = None,
        chat: bool = False,
    ) -> torch.Tensor:
        raise NotImplementedError("use the hf backend for NeuralUCB features")

    def embedding_norm(self) -> float:
        return float(self._embedding_weight().float().norm(dim=-1).mean())

    # ---------------------------------------------------------------- internals
    def _embedding_weight(self) -> torch.Tensor:
        if self.embedding_weight is None:
            raise NotImplementedError(
                "VLLMGenerator needs `embedding_weight` (the model's input embeddings) for "
                "soft prompts; make_generator passes it from the loaded model"
            )
        return self.embedding_weight

    def _sampling_params(self, params: SamplingParams, base_seed: int, index: int) -> Any:
        from vllm import SamplingParams as VLLMSamplingParams

        common: dict[str, Any] = {"max_tokens": params.max_new_tokens, "stop": list(params.stop)}
        if params.greedy:
            # One greedy sequence per prompt; _run repeats it num_samples times.
            return VLLMSamplingParams(n=1, temperature=0.0, **common)
        return VLLMSamplingParams(
            n=params.num_samples,
            temperature=params.temperature,
            top_p=params.top_p,
            # Per-prompt seeds: a prompt's samples do not depend on the other prompts in the call.
            seed=row_seed(base_seed, index, 0) & 0x7FFFFFFF,
            **common,
        )

    def _run(
        self,
        inputs: list[dict[str, Any]],
        params: SamplingParams,
        progress: Callable[[int], None] | None,
    ) -> list[list[Completion]]:
        base_seed = params.seed
        if base_seed is None:
            base_seed = int(torch.randint(0, 2**62, ()).item())
        results: list[list[Completion]] = []
        for start in range(0, len(inputs), self.progress_chunk):
            chunk = inputs[start : start + self.progress_chunk]
            sampling = [
                self._sampling_params(params, base_seed, start + k) for k in range(len(chunk))
            ]
            began = time.perf_counter()
            outputs = self.llm.generate(chunk, sampling_params=sampling, use_tqdm=False)
            elapsed = time.perf_counter() - began
            tokens = 0
            for request in outputs:
                completions = [_completion(out, params.stop) for out in request.outputs]
                tokens += sum(c.tokens for c in completions)
                if params.greedy:
                    completions = completions[:1] * params.num_samples
                results.append(completions)
            self.stats.add(tokens, elapsed, sum(len(r.outputs) for r in outputs))
            if progress is not None:
                progress(len(chunk))
        return results


def _completion(output: Any, stop: Sequence[str]) -> Completion:
    """A vLLM ``CompletionOutput`` as a Completion (vLLM already drops the stop string)."""
    text = output.text
    cut = first_stop(text, stop)
    if cut is not None:
        text = text[:cut]
    reason = "length" if output.finish_reason == "length" and cut is None else "stop"
    return Completion(text, len(output.token_ids), reason)
