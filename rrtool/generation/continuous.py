"""Continuous batching for the ``hf`` backend: a finished row leaves the batch at once and the
next prompt takes its slot.

Why: transformers' ``generate`` keeps computing every row of a batch until the last one ends,
and a batch's next prompts wait for it. NER answers end at very different lengths. The gain is
largest on Reveal's NER queries, where prompt processing dominates and the shared prompt prefix
is computed once per call instead of once per batch, and small on continuations that mostly run
to their token limit (decoding a small model on CPU reads every weight once per step, so a step
with fewer rows costs about the same: the gain is in fuller batches). Measured by
``tests/bench_continuous.py``.

How: the running rows share one :class:`~transformers.DynamicCache`, left-padded to a common
width. The attention mask marks each row's real positions and each row's position id is the
count of its real tokens, exactly as ``generate`` numbers them, so a row computes what it would
alone. A finished row is cut out of the cache (``batch_select_indices``); when a quarter of the
slots are free, the next prompts are prefilled together and their cache is padded on the left
and joined to the running one. Token choice is that of the batch path: argmax for greedy, and
for sampling each row's private generator, seeded by (seed, prompt, sample) and drawn once per
step of that row, so completions are identical to ``generate``'s (tested row by row).

Only plain full-attention caches can be joined this way; :func:`supports` says when the model
qualifies, and the generator falls back to ``generate`` otherwise.

**Drafts** (greedy only): a row may come with a guess of its answer, e.g. the same prompt's
answer from the model before a small change of its weights (a quantized copy, an attached
adapter: the attacks of the audit). The guess is prefilled with the prompt, and the argmax at
each of its positions is read from that one forward pass: the row takes the guessed tokens up to
the first one the model would not have chosen, plus the model's own choice there, and decodes
on from that point. Every token kept is the model's argmax after the tokens before it, so the
answer is the one plain greedy decoding finds (up to floating-point ties between a batched and
an incremental forward); a good guess replaces dozens of decoding steps by one prefill, a wrong
one costs the prefill of its tokens. The rejected positions stay in the cache, masked.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from rrtool.generation.hf_inputs import (
    cache_argument,
    full_attention_only,
    left_padded,
    new_cache,
    takes_logits_to_keep,
    with_soft_prefix,
)

# Logits one drafted admission may hold (rows x draft positions x vocabulary; 256 MB in
# float32): a long draft admits fewer rows at once.
DRAFT_LOGITS = 1 << 26

# Logit processors ``generate`` would add from a model's generation config; the decoder here
# applies none of them, so a model that sets one must use the batch path.
_PROCESSOR_DEFAULTS: dict[str, Any] = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
}


def supports(model: Any) -> bool:
    """Whether the decoder can run ``model``: full-attention layers only (a sliding-window or
    recurrent layer cache cannot be left-padded and joined), no config-level logit processors."""
    if not full_attention_only(model):
        return False
    generation = model.generation_config
    for name, default in _PROCESSOR_DEFAULTS.items():
        value = getattr(generation, name, default)
        if value is not None and value != default and value:
            return False
    return True


@dataclass
class _Row:
    index: int  # position in the caller's list of rows
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DecodeRequest:
    """What the decoder needs besides the prompts; ``choose`` maps float32 logits (n, vocab)
    and the rows' generators to one token id per row."""

    max_new_tokens: int
    eos_ids: frozenset[int]
    choose: Callable[[torch.Tensor, list[torch.Generator | None]], torch.Tensor]
    finished: Callable[[list[int]], bool] | None = None  # e.g. a stop string completed


class ContinuousDecoder:
    """Decodes token-id prompts with at most ``batch_size`` rows in each forward pass."""

    def __init__(self, model: Any, pad_id: int, batch_size: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.batch_size = batch_size
        self.refill_at = max(1, batch_size // 4)
        self._cache_key = cache_argument(model)
        self._keep = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
        self.row_steps = 0  # rows summed over forward passes (a prefill is a row's first step)

    @property
    def _device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # ------------------------------------------------------------------ public
    def run(
        self,
        rows: Sequence[list[int]],
        generators: Sequence[torch.Generator | None],
        request: DecodeRequest,
        *,
        shared: int = 0,
        prefix_embeds: torch.Tensor | None = None,
        on_done: Callable[[int, list[int]], None] | None = None,
        drafts: Sequence[list[int]] | None = None,
    ) -> list[list[int]]:
        """New tokens per row (EOS included when reached), rows admitted in the given order.

        ``shared``: the first ``shared`` tokens are common to every row and computed once.
        ``prefix_embeds``: soft tokens placed before each row's tokens (then ``shared`` is 0).
        ``drafts``: a guessed answer per row (token ids, possibly empty; greedy ``choose`` only,
        no soft tokens): see the module doc.
        """
        if drafts is not None:
            if prefix_embeds is not None or any(g is not None for g in generators):
                raise ValueError("drafts need greedy decoding without soft tokens")
            drafts = [list(d[: request.max_new_tokens]) for d in drafts]
        out: list[list[int]] = [[] for _ in rows]
        pending = deque(range(len(rows)))
        prefix_cache = self._prefix_cache(rows[0][:shared]) if shared and rows else None
        active: list[_Row] = []
        cache: Any = None
        mask = torch.zeros((0, 0), dtype=torch.long, device=self._device)
        last = torch.zeros(0, dtype=torch.long, device=self._device)

        def finish(row: _Row) -> None:
            out[row.index] = row.tokens
            if on_done is not None:
                on_done(row.index, row.tokens)

        def settle(new_rows: list[_Row], tokens: torch.Tensor) -> list[int]:
            """Append each row's chosen token; indices (into ``new_rows``) of rows still going."""
            going = []
            for k, (row, token) in enumerate(zip(new_rows, tokens.tolist(), strict=True)):
                row.tokens.append(token)
                if self._done(row.tokens, request):
                    finish(row)
                else:
                    going.append(k)
            return going

        while pending or active:
            free = self.batch_size - len(active)
            if pending and (not active or free >= min(self.refill_at, len(pending))):
                take = [pending.popleft() for _ in range(self._admitted(pending, free, drafts))]
                new_rows = [_Row(i, generators[i]) for i in take]
                if drafts is None:
                    new_cache, new_mask, logits = self._admit(
                        [rows[i] for i in take], shared, prefix_cache, prefix_embeds
                    )
                    tokens = request.choose(logits, [r.generator for r in new_rows])
                    going = settle(new_rows, tokens)
                else:
                    new_cache, new_mask, tokens, going = self._admit_drafted(
                        new_rows, [rows[i] for i in take], [drafts[i] for i in take], shared,
                        prefix_cache, request, finish,
                    )  # fmt: skip
                if going:
                    keep = torch.tensor(going, device=self._device)
                    new_cache.batch_select_indices(keep)
                    if cache is None:
                        cache, mask = new_cache, new_mask[keep]
                    else:
                        mask = _join(cache, mask, new_cache, new_mask[keep])
                    active += [new_rows[k] for k in going]
                    last = torch.cat([last, tokens.to(self._device)[keep]])
                if not active:
                    cache = None
                continue

            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
            positions = mask.sum(dim=1, keepdim=True) - 1
            logits = self._forward(
                input_ids=last.unsqueeze(1),
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
            )
            tokens = request.choose(logits, [r.generator for r in active])
            going = settle(active, tokens)
            if len(going) < len(active):
                keep = torch.tensor(going, dtype=torch.long, device=self._device)
                active = [active[k] for k in going]
                if not active:
                    cache, mask = None, mask[:0, :0]
                    last = last[:0]
                    continue
                cache.batch_select_indices(keep)
                mask = mask[keep]
                mask = _trim_left(cache, mask)
                tokens = tokens.to(self._device)[keep]
            last = tokens.to(self._device)
        return out

    # ------------------------------------------------------------------ internals
    def _admitted(self, pending: deque[int], free: int, drafts: Sequence[list[int]] | None) -> int:
        """How many pending rows to admit now: the free slots, fewer where drafted rows'
        window logits (rows x (draft + 1) x vocabulary) would pass ``DRAFT_LOGITS``."""
        count = min(free, len(pending))
        if drafts is None:
            return count
        window = 1 + max(len(drafts[pending[k]]) for k in range(count))
        return max(1, min(count, DRAFT_LOGITS // (window * self._vocab)))

    def _admit_drafted(
        self,
        new_rows: list[_Row],
        prompts: list[list[int]],
        drafts: list[list[int]],
        shared: int,
        prefix_cache: Any,
        request: DecodeRequest,
        settle_row: Callable[[_Row], None],
    ) -> tuple[Any, torch.Tensor, torch.Tensor, list[int]]:
        """Prefill prompts with their drafts and keep, per row, the draft's tokens up to the
        first the model would not choose plus its own choice there (module doc). Returns the
        cache, the mask (rejected draft positions masked), each row's last token and the
        indices of the rows still going; finished rows go to ``settle_row``."""
        full = [p + d for p, d in zip(prompts, drafts, strict=True)]
        cache, mask, chosen = self._admit(
            full, shared, prefix_cache, None, window=[len(d) + 1 for d in drafts]
        )
        going, last = [], [0] * len(new_rows)  # a finished row's last token is never read
        for k, (row, draft, picks) in enumerate(zip(new_rows, drafts, chosen, strict=True)):
            for j, token in enumerate(picks):
                row.tokens.append(token)
                if self._done(row.tokens, request):
                    settle_row(row)
                    break
                if j == len(draft) or token != draft[j]:  # the model's own choice: decode on
                    rejected = len(draft) - j
                    if rejected:
                        mask[k, mask.shape[1] - rejected :] = 0
                    going.append(k)
                    last[k] = token
                    break
        return cache, mask, torch.tensor(last, dtype=torch.long), going

    @property
    def _vocab(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @staticmethod
    def _done(tokens: list[int], request: DecodeRequest) -> bool:
        if tokens[-1] in request.eos_ids or len(tokens) >= request.max_new_tokens:
            return True
        return request.finished is not None and request.finished(tokens)

    def _new_cache(self) -> Any:
        return new_cache(self.model)

    def _forward(self, *, cache: Any, window: int | None = None, **inputs: Any) -> torch.Tensor:
        """Last position's float32 logits (as generate hands scores to its processors); with
        ``window``, the argmax tokens (rows, positions) at the last ``window`` positions (fewer
        when the input is shorter): greedy choices at every draft position at once. The argmax
        of the model's own dtype equals that of float32 logits (the cast is exact)."""
        first = inputs.get("input_ids", inputs.get("inputs_embeds"))
        self.row_steps += int(first.shape[0])
        keep = self._keep if window is None or not self._keep else {"logits_to_keep": window}
        out = self.model(use_cache=True, **{self._cache_key: cache}, **keep, **inputs)
        if window is not None:
            return out.logits[:, -window:, :].argmax(dim=-1)
        return out.logits[:, -1, :].float()

    def _prefix_cache(self, head: list[int], start: Any = None, offset: int = 0) -> Any:
        """The one-row cache of ``head`` (continuing ``start``, a cache of ``offset`` tokens)."""
        cache = self._new_cache() if start is None else copy.deepcopy(start)
        ids = torch.tensor([head], dtype=torch.long, device=self._device)
        positions = torch.arange(offset, offset + len(head), device=self._device).unsqueeze(0)
        mask = torch.ones((1, offset + len(head)), dtype=torch.long, device=self._device)
        self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache)
        return cache

    def _admit(
        self,
        rows: list[list[int]],
        shared: int,
        prefix_cache: Any,
        prefix_embeds: torch.Tensor | None,
        window: list[int] | None = None,
    ) -> tuple[Any, torch.Tensor, Any]:
        """Prefill new rows, computing a prefix that neighbouring rows share once per group.

        Rows arrive sorted by their tokens, so prompts that share a prefix are neighbours (the
        NER queries of one type share the system message and one-shot example, which name the
        type; the samples of one prompt share all of it): that prefix is computed once per
        group, on top of the prefix every row shares.

        Returns the last position's logits per row; with ``window`` (positions per row, each
        at least 1) instead the greedy token at each of a row's last ``window`` positions
        (a list per row), none of which is in a cached prefix.
        """
        if prefix_embeds is not None:
            return self._prefill(rows, 0, None, prefix_embeds)
        uncached = window or [1] * len(rows)
        parts = []
        lone: list[int] = []  # neighbouring rows that share nothing more: prefilled together

        def prefill_lone() -> None:
            if lone:
                part = None if window is None else window[lone[0] : lone[-1] + 1]
                group = rows[lone[0] : lone[-1] + 1]
                parts.append(self._prefill(group, shared, prefix_cache, None, part))
                lone.clear()

        for start, end, common in _groups(rows, shared, uncached):
            if common > shared:
                prefill_lone()
                part = None if window is None else window[start:end]
                cache = self._prefix_cache(rows[start][shared:common], prefix_cache, shared)
                parts.append(self._prefill(rows[start:end], common, cache, None, part))
            else:
                # One batched forward instead of one per row: the weights are read once for
                # all of them.
                lone.extend(range(start, end))
        prefill_lone()
        cache, mask, _ = parts[0]
        for other, other_mask, _ in parts[1:]:
            mask = _join(cache, mask, other, other_mask)
        if window is not None:
            return cache, mask, [picks for p in parts for picks in p[2]]
        return cache, mask, torch.cat([p[2] for p in parts])

    def _prefill(
        self,
        rows: list[list[int]],
        shared: int,
        prefix_cache: Any,
        prefix_embeds: torch.Tensor | None,
        window: list[int] | None = None,
    ) -> tuple[Any, torch.Tensor, Any]:
        """Cache, attention mask and next-token logits of new rows (with ``window``: each
        row's greedy tokens at its last ``window[k]`` positions, as in :meth:`_admit`).

        Layouts (positions count real tokens only, so padding changes nothing):
        ``[pad | prompt]``, ``[shared prefix | pad | tail]`` or ``[pad | soft tokens | prompt]``.
        """
        tails = [r[shared:] for r in rows]
        ids, mask = left_padded(tails, self.pad_id, self._device)
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(rows))
            mask = torch.cat([mask.new_ones(len(rows), shared), mask], dim=1)
            inputs: dict[str, Any] = {"input_ids": ids}
        elif prefix_embeds is not None:
            cache = self._new_cache()
            embeds = self.model.get_input_embeddings()(ids)
            full, mask = with_soft_prefix(embeds, mask, [len(t) for t in tails], prefix_embeds)
            inputs = {"inputs_embeds": full}
        else:
            cache = self._new_cache()
            inputs = {"input_ids": ids}
        # generate's numbering: the running count of real tokens, padding given position 1.
        positions = (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 1)
        width_in = next(iter(inputs.values())).shape[1]
        if window is not None:
            picks = self._forward(
                attention_mask=mask, position_ids=positions[:, -width_in:], cache=cache,
                window=max(window), **inputs,
            ).tolist()  # fmt: skip
            return cache, mask, [row[len(row) - w :] for row, w in zip(picks, window, strict=True)]
        logits = self._forward(
            attention_mask=mask, position_ids=positions[:, -width_in:], cache=cache, **inputs
        )
        return cache, mask, logits


MIN_GROUP_PREFIX = 16  # tokens a group must share beyond the common prefix to be cached


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _groups(
    rows: list[list[int]], shared: int, uncached: list[int] | None = None
) -> list[tuple[int, int, int]]:
    """Runs ``(start, end, prefix)`` of neighbouring rows that share ``prefix`` tokens
    (``shared`` when fewer than ``MIN_GROUP_PREFIX`` more); the last ``uncached[k]`` tokens of
    row k (default one) stay out of the prefix, so every row has them to prefill."""
    tail = uncached or [1] * len(rows)
    groups: list[tuple[int, int, int]] = []
    start, common = 0, len(rows[0]) - tail[0]
    for k in range(1, len(rows) + 1):
        if k < len(rows):
            joint = min(common, _common(rows[start], rows[k]), len(rows[k]) - tail[k])
            if joint >= shared + MIN_GROUP_PREFIX:
                common = joint
                continue
        size = k - start
        groups.append((start, k, common if size > 1 else shared))
        if k < len(rows):
            start, common = k, len(rows[k]) - tail[k]
    return groups


def _layers(cache: Any) -> list[Any]:
    return list(cache.layers)


def _join(cache: Any, mask: torch.Tensor, new: Any, new_mask: torch.Tensor) -> torch.Tensor:
    """Append ``new``'s rows to ``cache`` (in place), padding the narrower on the left."""
    width = max(mask.shape[1], new_mask.shape[1])
    for layer, other in zip(_layers(cache), _layers(new), strict=True):
        layer.keys = torch.cat([_pad_left(layer.keys, width), _pad_left(other.keys, width)])
        layer.values = torch.cat([_pad_left(layer.values, width), _pad_left(other.values, width)])
    return torch.cat(
        [F.pad(mask, (width - mask.shape[1], 0)), F.pad(new_mask, (width - new_mask.shape[1], 0))]
    )


def _pad_left(states: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, heads, length, dim) states padded with zeros to ``width`` positions."""
    missing = width - states.shape[-2]
    return F.pad(states, (0, 0, missing, 0)) if missing else states


def _trim_left(cache: Any, mask: torch.Tensor) -> torch.Tensor:
    """Drop leading positions no remaining row uses (a long row just left)."""
    used = mask.any(dim=0).nonzero()
    first = int(used[0]) if len(used) else 0
    if first == 0:
        return mask
    for layer in _layers(cache):
        layer.keys = layer.keys[:, :, first:, :]
        layer.values = layer.values[:, :, first:, :]
    return mask[:, first:]
