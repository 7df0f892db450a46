"""Batched generation with transformers: left padding, seeded sampling, stop strings, soft prompts.

Sampling does not use transformers' ``do_sample`` path: ``generate`` takes no
``torch.Generator``, and seeding the global RNG would tie each completion to its batch-mates
and to the sort order. Instead decoding runs in greedy mode with :class:`_SeededSampler` as the
last logits processor; it applies temperature and top-p (transformers' own warpers) and draws
each row's token from that row's private generator, seeded from (seed, prompt index, sample
index). A completion therefore depends only on its prompt, the seed and its position in the call.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers.generation import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TopPLogitsWarper,
)

from rrtool.generation.base import (
    Completion,
    GenerationStats,
    Prompt,
    SamplingParams,
    check_nonempty,
    encode_prompt,
    first_stop,
    row_seed,
)
from rrtool.generation.continuous import ContinuousDecoder, DecodeRequest, supports
from rrtool.generation.hf_inputs import (
    cache_argument,
    left_padded,
    new_cache,
    takes_logits_to_keep,
    with_soft_prefix,
)
from rrtool.generation.precision import computing_in, dtype_of

TOP_P_CANDIDATES = 1024


def top_p_filter(
    input_ids: torch.LongTensor, scores: torch.FloatTensor, top_p: float
) -> torch.FloatTensor:
    """Nucleus filtering with the semantics of transformers' ``TopPLogitsWarper`` (a token is
    kept when the mass ranked strictly above it is below ``top_p``), without sorting the whole
    vocabulary: the top ``TOP_P_CANDIDATES`` logits almost always hold the nucleus, and when
    their mass reaches ``top_p`` nothing outside them can be kept, so the result is exact.
    Rows whose nucleus is wider fall back to the full sort. (The full sort of a 49k vocabulary
    was a fifth of SmolLM2's sampled decoding time on CPU.)
    """
    k = min(TOP_P_CANDIDATES, scores.shape[-1])
    values, indices = scores.float().topk(k, dim=-1)
    log_total = torch.logsumexp(scores.float(), dim=-1, keepdim=True)
    mass = (values - log_total).exp()
    above = mass.cumsum(dim=-1) - mass  # mass ranked strictly above each candidate
    keep = above < top_p
    keep[:, 0] = True  # at least one token, as the warper's min_tokens_to_keep
    out = torch.full_like(scores, float("-inf"))
    out.scatter_(1, indices, torch.where(keep, values, float("-inf")).to(scores.dtype))
    wide = (mass.sum(dim=-1) < top_p).nonzero().flatten()
    if len(wide):
        out[wide] = TopPLogitsWarper(top_p)(input_ids[wide], scores[wide])
    return out


MIN_SHARED_PREFIX = 16  # below this, one more forward pass is not worth the bookkeeping


def draw_tokens(
    scores: torch.Tensor,
    temperature: float,
    top_p: float,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """One token per row: temperature and nucleus filtering (transformers' semantics), then one
    uniform draw from each row's own generator. Shared by both decoding paths, so a seeded
    completion is the same whichever path computed it."""
    scores = scores / temperature  # what TemperatureLogitsWarper computes
    if top_p < 1.0:
        scores = top_p_filter(scores.new_zeros(scores.shape[0], 1).long(), scores, top_p)
    cdf = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1)
    uniform = torch.stack([torch.rand((), generator=g) for g in generators])
    target = (uniform.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    # right=True picks the first index whose cdf exceeds the draw: never a zero-mass token.
    return torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


class _SeededSampler(LogitsProcessor):
    """Samples one token per row from per-row generators; returns logits that make it the argmax."""

    def __init__(self, temperature: float, top_p: float, seeds: Sequence[int]) -> None:
        self.temperature = temperature
        self.top_p = top_p
        # CPU generators: the same draws on every device, and no per-row kernel launches.
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = draw_tokens(scores, self.temperature, self.top_p, self.generators)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen.unsqueeze(-1), 0.0)


class _StopOnStrings(StoppingCriteria):
    """Ends a row once its newly generated text contains a stop string.

    Only a tail of each row is decoded per step: a stop string that just completed lies in it.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.prompt_len = prompt_len
        # A token decodes to at least one character, bar partial UTF-8 bytes: keep a margin.
        self.tail = max(len(s) for s in stop) + 8

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len :]
        texts = self.tokenizer.batch_decode(new[:, -self.tail :], skip_special_tokens=True)
        done = [first_stop(text, self.stop) is not None for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFGenerator:
    """The :class:`~rrtool.generation.base.Generator` over a transformers causal LM."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 16,
        *,
        cache_prefix: bool = True,
        continuous: bool = True,
        compute_dtype: str = "model",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self._cache_prefix = cache_prefix
        # Continuous batching where the model allows it; `continuous=False` keeps transformers'
        # generate (the reference the tests compare against).
        self.continuous = continuous and supports(model)
        self._compute = dtype_of(compute_dtype)
        self.compute_dtype = compute_dtype  # part of the answer cache's key
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.stats = GenerationStats()
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    # ---------------------------------------------------------------- public API
    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        *,
        chat: bool = True,
        progress: Callable[[int], None] | None = None,
        drafts: Sequence[str | None] | None = None,
    ) -> list[list[Completion]]:
        encoded = [encode_prompt(self.tokenizer, p, chat=chat) for p in prompts]
        check_nonempty(encoded, prompts)
        guessed = None
        if drafts is not None and params.greedy and self.continuous:
            if len(drafts) != len(prompts):
                raise ValueError(f"{len(drafts)} drafts for {len(prompts)} prompts")
            guessed = [
                self.tokenizer(d, add_special_tokens=False)["input_ids"] if d else []
                for d in drafts
            ]
        return self._generate(encoded, params, None, progress, guessed)

    def generate_from_embeds(
        self,
        prefix_embeds: torch.Tensor,
        prompts: Sequence[str],
        params: SamplingParams,
        *,
        chat: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]:
        prefix = self._check_prefix(prefix_embeds)
        encoded = [encode_prompt(self.tokenizer, p, chat=chat) for p in prompts]
        return self._generate(encoded, params, prefix, progress)

    def last_token_features(
        self,
        prompts: Sequence[str],
        *,
        prefix_embeds: torch.Tensor | None = None,
        batch_size: int | None = None,
        chat: bool = False,
    ) -> torch.Tensor:
        prefix = None if prefix_embeds is None else self._check_prefix(prefix_embeds)
        encoded = [encode_prompt(self.tokenizer, p, chat=chat) for p in prompts]
        if prefix is None:
            check_nonempty(encoded, prompts)
        # The vocab projection of every position is not needed; not every model takes the flag.
        extra = {"logits_to_keep": 1} if takes_logits_to_keep(self.model) else {}
        size = batch_size or self.batch_size
        hidden = self.model.config.get_text_config().hidden_size
        features = torch.empty(len(encoded), hidden, dtype=torch.float32)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        with self._inference():
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                embeds, mask = self._embed_left_padded([encoded[i] for i in chunk], prefix)
                # Without explicit positions a forward pass would count the left padding.
                positions = (mask.cumsum(-1) - 1).clamp_(min=0)
                out = self.model(
                    inputs_embeds=embeds,
                    attention_mask=mask,
                    position_ids=positions,
                    output_hidden_states=True,
                    use_cache=False,
                    **extra,
                )
                features[chunk] = out.hidden_states[-1][:, -1, :].float().cpu()
        return features

    def embedding_norm(self) -> float:
        weight = self.model.get_input_embeddings().weight
        return float(weight.detach().float().norm(dim=-1).mean())

    # ---------------------------------------------------------------- internals
    @property
    def _device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _check_prefix(self, prefix_embeds: torch.Tensor) -> torch.Tensor:
        embedding = self.model.get_input_embeddings().weight
        if prefix_embeds.dim() != 2 or prefix_embeds.shape[1] != embedding.shape[1]:
            raise ValueError(
                f"prefix_embeds must be (n_soft, {embedding.shape[1]}); "
                f"got {tuple(prefix_embeds.shape)}"
            )
        return prefix_embeds.detach().to(device=embedding.device, dtype=embedding.dtype)

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        # Generation may be called mid-training (Release): eval mode for determinism, restored.
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), computing_in(self.model, self._compute):
                yield
        finally:
            if was_training:
                self.model.train()

    def _shared_prefix(self, rows: list[list[int]]) -> int:
        """Length of the token prefix all rows share, when worth computing once.

        Chat prompts with a system message and a one-shot exchange (Reveal's NER queries) share
        most of their tokens; on SmolLM2 that prefix was ~65% of every prompt, and prompt
        processing dominated generation. At least one token of each row stays uncached.
        """
        if len(rows) < 2 or not self._cache_prefix:
            return 0
        first, shortest = rows[0], min(len(r) for r in rows)
        n = 0
        while n < shortest - 1 and all(r[n] == first[n] for r in rows):
            n += 1
        return n if n >= MIN_SHARED_PREFIX else 0

    def _with_prefix_cache(self, rows: list[list[int]], shared: int) -> dict[str, Any]:
        """Inputs for ``generate`` that reuse one forward pass over the shared prefix.

        Layout per row: the prefix, then padding, then the row's own tokens. The padding is
        masked and ``generate`` numbers positions by the mask's running count, so each row sees
        exactly the positions it would have alone; the prefix's keys and values (computed once,
        at positions 0..shared-1) are repeated for the batch.
        """
        head = torch.tensor([rows[0][:shared]], dtype=torch.long, device=self._device)
        key = cache_argument(self.model)
        cache = new_cache(self.model)
        self.model(input_ids=head, use_cache=True, **{key: cache})
        cache.batch_repeat_interleave(len(rows))
        tails = [r[shared:] for r in rows]
        width = max(len(t) for t in tails)
        ids = torch.full((len(rows), shared + width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
        ids[:, :shared] = head[0].cpu()
        mask[:, :shared] = 1
        for k, tail in enumerate(tails):
            ids[k, shared + width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
            mask[k, shared + width - len(tail) :] = 1
        return {
            "input_ids": ids.to(self._device),
            "attention_mask": mask.to(self._device),
            key: cache,
        }

    def _ids_left_padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return left_padded(rows, self.pad_id, self._device)

    def _embed_left_padded(
        self, rows: list[list[int]], prefix: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [pad ... | soft tokens | prompt tokens] per row (``with_soft_prefix``)."""
        ids, mask = self._ids_left_padded(rows)
        embeds = self.model.get_input_embeddings()(ids)
        if prefix is not None:
            embeds, mask = with_soft_prefix(embeds, mask, [len(r) for r in rows], prefix)
        return embeds, mask

    def _generate(
        self,
        encoded: list[list[int]],
        params: SamplingParams,
        prefix: torch.Tensor | None,
        progress: Callable[[int], None] | None,
        drafts: list[list[int]] | None = None,
    ) -> list[list[Completion]]:
        # Greedy samples are identical: decode once, repeat.
        per_prompt = 1 if params.greedy else params.num_samples
        base_seed = params.seed
        if base_seed is None:
            # Drawn from torch's global RNG so a caller's torch.manual_seed still reproduces.
            base_seed = int(torch.randint(0, 2**62, ()).item())
        if self.continuous:
            results = self._generate_continuous(
                encoded, params, prefix, progress, base_seed, drafts
            )
            return (
                results
                if per_prompt == params.num_samples
                else [r * params.num_samples for r in results]
            )
        # batch_size bounds the rows in a forward pass (memory), so samples share it.
        prompts_per_batch = max(1, self.batch_size // per_prompt)
        # Longest first: similar lengths share a batch (less padding) and any OOM shows early.
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[list[Completion]] = [[] for _ in encoded]
        for start in range(0, len(order), prompts_per_batch):
            chunk = order[start : start + prompts_per_batch]
            rows = [(i, j) for i in chunk for j in range(per_prompt)]
            seeds = [row_seed(base_seed, i, j) for i, j in rows]
            began = time.perf_counter()
            completions, steps = self._generate_rows(
                [encoded[i] for i, _ in rows], params, prefix, seeds
            )
            self.stats.add(
                sum(c.tokens for c in completions),
                time.perf_counter() - began,
                len(rows),
                len(rows) * steps,
            )
            for (i, _), completion in zip(rows, completions, strict=True):
                results[i].append(completion)
            if progress is not None:
                progress(len(chunk))
        if per_prompt != params.num_samples:
            results = [r * params.num_samples for r in results]
        return results

    def _generate_continuous(
        self,
        encoded: list[list[int]],
        params: SamplingParams,
        prefix: torch.Tensor | None,
        progress: Callable[[int], None] | None,
        base_seed: int,
        drafts: list[list[int]] | None = None,
    ) -> list[list[Completion]]:
        """``drafts``: greedy only, a guessed answer's tokens per prompt (the decoder checks
        them in one forward pass; see ``continuous``)."""
        per_prompt = 1 if params.greedy else params.num_samples
        # Sorted by tokens: prompts that share a prefix (Reveal's NER queries of one type share
        # the system message and the one-shot example) and the samples of one prompt are
        # neighbours, and the decoder computes what they share once. Slots refill as rows
        # finish, so lengths need not be sorted.
        order = sorted(range(len(encoded)), key=lambda i: encoded[i])
        rows = [(i, j) for i in order for j in range(per_prompt)]
        if params.greedy:
            generators: list[torch.Generator | None] = [None] * len(rows)

            def choose(logits: torch.Tensor, _: list[torch.Generator | None]) -> torch.Tensor:
                return logits.argmax(dim=-1)
        else:
            generators = [torch.Generator().manual_seed(row_seed(base_seed, i, j)) for i, j in rows]

            def choose(logits: torch.Tensor, gens: list[torch.Generator | None]) -> torch.Tensor:
                return draw_tokens(logits, params.temperature, params.top_p, gens)  # type: ignore[arg-type]

        finished = None
        if params.stop:
            tail = max(len(s) for s in params.stop) + 8  # as _StopOnStrings

            def finished(tokens: list[int]) -> bool:
                text = self.tokenizer.decode(tokens[-tail:], skip_special_tokens=True)
                return first_stop(text, params.stop) is not None

        request = DecodeRequest(params.max_new_tokens, frozenset(self.eos_ids), choose, finished)
        remaining = {i: per_prompt for i in order}

        def on_done(row: int, _: list[int]) -> None:
            prompt = rows[row][0]
            remaining[prompt] -= 1
            if remaining[prompt] == 0 and progress is not None:
                progress(1)

        decoder = ContinuousDecoder(self.model, self.pad_id, self.batch_size)
        row_ids = [encoded[i] for i, _ in rows]
        shared = self._shared_prefix(row_ids) if prefix is None else 0
        began = time.perf_counter()
        with self._inference():
            tokens = decoder.run(
                row_ids, generators, request, shared=shared, prefix_embeds=prefix,
                on_done=on_done, drafts=None if drafts is None else [drafts[i] for i, _ in rows],
            )  # fmt: skip
        completions = [self._completion(t, params) for t in tokens]
        self.stats.add(
            sum(c.tokens for c in completions),
            time.perf_counter() - began,
            len(rows),
            decoder.row_steps,
        )
        results: list[list[Completion]] = [[] for _ in encoded]
        for (i, _), completion in zip(rows, completions, strict=True):
            results[i].append(completion)
        return results

    def _generate_rows(
        self,
        rows: list[list[int]],
        params: SamplingParams,
        prefix: torch.Tensor | None,
        seeds: list[int],
    ) -> tuple[list[Completion], int]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": False,
            "num_beams": 1,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_ids,
            # Explicit Nones: a model's own sampling defaults must not leak into (or warn in)
            # greedy mode; the sampling itself happens in _SeededSampler.
            "temperature": None,
            "top_p": None,
            "top_k": None,
        }
        if not params.greedy:
            sampler = _SeededSampler(params.temperature, params.top_p, seeds)
            kwargs["logits_processor"] = LogitsProcessorList([sampler])
        with self._inference():
            shared = self._shared_prefix(rows) if prefix is None else 0
            if shared:
                inputs = self._with_prefix_cache(rows, shared)
                prompt_len = inputs["input_ids"].shape[1]
            elif prefix is None:
                ids, mask = self._ids_left_padded(rows)
                inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
                prompt_len = ids.shape[1]
            else:
                embeds, mask = self._embed_left_padded(rows, prefix)
                inputs = {"inputs_embeds": embeds, "attention_mask": mask}
                prompt_len = 0  # with embeddings only, generate returns just the new tokens
            if params.stop:
                criteria = _StopOnStrings(self.tokenizer, params.stop, prompt_len)
                kwargs["stopping_criteria"] = StoppingCriteriaList([criteria])
            out = self.model.generate(**inputs, **kwargs)
        new_tokens = out[:, prompt_len:].tolist()
        return [self._completion(tokens, params) for tokens in new_tokens], len(new_tokens[0])

    def _completion(self, tokens: list[int], params: SamplingParams) -> Completion:
        eos_at = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
        if eos_at is not None:
            tokens = tokens[: eos_at + 1]
        text = self._decode(tokens)
        cut = first_stop(text, params.stop)
        if cut is not None:
            return Completion(text[:cut], self._tokens_to_stop(tokens, params.stop), "stop")
        if eos_at is not None:
            return Completion(text, len(tokens), "stop")
        # Rows that ended early are padded; the pad token is special, so decoding dropped it.
        return Completion(text, len(tokens), "length")

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _tokens_to_stop(self, tokens: list[int], stop: Sequence[str]) -> int:
        """Fewest leading tokens whose text holds a stop string (binary search: the property is
        monotone in the prefix length)."""
        low, high = 1, len(tokens)
        while low < high:
            mid = (low + high) // 2
            if first_stop(self._decode(tokens[:mid]), stop) is not None:
                high = mid
            else:
                low = mid + 1
        return low


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids from the generation config and the tokenizer: chat models often end turns with a
    token (``<|im_end|>``) that only one of the two lists."""
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.append(configured)
    elif configured:
        ids.extend(configured)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model has no EOS token (neither its generation config nor tokenizer)")
    return sorted(set(ids))
