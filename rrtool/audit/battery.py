"""The attack battery as one table: each probe's budget, the forget measure on the base model,
on the released model and under the attack, with the attacked value's 95% interval, and a
plain verdict.

Verdicts for the attacks that try to bring the target back (relearning, each quantization
scheme, the worst elicitation phrasing), ``recovered`` = (attacked - released) / (base -
released):

- ``nothing was forgotten``: the released model is not better than the base on the measure,
  or not outside the noise (the paired interval of the change contains 0), so there is
  nothing to recover (``recovered`` is None);
- ``held``: the attacked value's 95% interval contains the released value (or, without an
  interval, less than a fifth came back), or the attack forgot more;
- ``came back (N%)``: half or more of what was forgotten returned; ``partly came back (N%)``:
  less than half, outside the noise.

The membership and linear probes give their own reading (``reading``).
"""

from __future__ import annotations

from typing import Any

HELD_WITHOUT_CI = 0.2  # without an interval, less than this share back reads as held


def attack_verdict(
    released: float | None,
    attacked: float | None,
    attacked_ci: list[float] | None,
    recovered: float | None,
) -> str:
    if recovered is None or released is None or attacked is None:
        return "nothing was forgotten" if attacked is not None else "not measured"
    if recovered <= 0:
        return "held"
    if attacked_ci is not None and attacked_ci[0] <= released <= attacked_ci[1]:
        return "held"
    if attacked_ci is None and recovered < HELD_WITHOUT_CI:
        return "held"
    share = f"{100 * recovered:.0f}%"
    return f"came back ({share})" if recovered >= 0.5 else f"partly came back ({share})"


def _row(
    attack: str, budget: str, base: Any, released: Any, attacked: Any, ci: Any, verdict: str,
    definition: str,
) -> dict[str, Any]:  # fmt: skip
    return {"attack": attack, "budget": budget, "base": base, "released": released,
            "attacked": attacked, "attacked_ci": ci, "verdict": verdict,
            "definition": definition}  # fmt: skip


def battery(probes: dict[str, Any], forget_before: float | None) -> list[dict[str, Any]]:
    """One row per attack (a quantization scheme each) of the recorded ``probes``;
    ``forget_before``: the audit's forget measure on the base model."""
    rows: list[dict[str, Any]] = []
    for name, probe in probes.items():
        if probe.get("status") != "done":
            found = [_row(name, "", None, None, None, None, probe.get("status", "?"), "")]
        else:
            found = ROWS[name](name, probe, forget_before)
        for row in found:  # a probe's wall time, on each of its rows (its schemes)
            row["seconds"] = probe.get("seconds")
        rows.extend(found)
    return rows


def _relearning(name: str, probe: dict[str, Any], _: float | None) -> list[dict[str, Any]]:
    if probe.get("sizes"):  # one row per attack size, each with its control
        return [
            row
            for size in probe["sizes"]
            for row in _relearning(
                f"{name} ({size['examples']})",
                {**probe, **size, "sizes": None, "budget": f"{size['examples']} examples"},
                None,
            )
        ]
    after = probe.get("after")
    attacked, ci = probe.get("after_relearning"), probe.get("after_relearning_ci")
    verdict = attack_verdict(after, attacked, ci, probe.get("recovered"))
    control = probe.get("base_after_same_fine_tune")
    if control is not None:
        verdict += f"; the base model after the same fine-tune: {control:.3g}"
    budget = probe.get("budget") or f"{probe.get('examples')} examples"
    return [_row(name, budget, probe.get("before"), after, attacked, ci, verdict,
                 probe.get("definition", ""))]  # fmt: skip


def _quantization(name: str, probe: dict[str, Any], _: float | None) -> list[dict[str, Any]]:
    before, after = probe.get("before"), probe.get("after")
    rows = []
    for scheme in probe.get("schemes", []):
        attacked, ci = scheme.get("released"), scheme.get("released_ci")
        verdict = attack_verdict(after, attacked, ci, scheme.get("recovered"))
        control = scheme.get("base")
        if control is not None:
            verdict += f"; base quantized the same way: {control:.3g}"
        rows.append(
            _row(
                f"quantization {scheme['scheme']}",
                scheme.get("text", ""),
                before,
                after,
                attacked,
                ci,
                verdict,
                probe.get("definition", ""),
            )  # fmt: skip
        )
    return rows


def _elicitation(name: str, probe: dict[str, Any], forget_before: float | None) -> list[dict]:
    from rrtool.audit.probes import recovered_share

    worst = probe.get("worst") or {}
    after = probe.get("standard_prompt_after")
    attacked, ci = worst.get("value"), worst.get("ci")
    # The base model in the same phrasing (the grid measures both); a run recorded before
    # the grid has only the standard prompt's before.
    base = worst.get("base", probe.get("before", forget_before))
    if worst.get("ratio") is not None:  # base and released in the same phrasing
        verdict = f"{worst.get('verdict')} in this phrasing (released / base {worst['ratio']:.2f})"
    else:
        recovered = recovered_share(base, after, attacked, probe.get("better", "lower"))
        verdict = attack_verdict(after, attacked, ci, recovered)
    return [_row(f"elicitation ({worst.get('name')})", probe.get("budget", ""), base, after,
                 attacked, ci, verdict, probe.get("definition", ""))]  # fmt: skip


def _membership(name: str, probe: dict[str, Any], _: float | None) -> list[dict[str, Any]]:
    budget = f"{probe.get('members')} members vs {probe.get('non_members')} non-members"
    return [_row(name, budget, probe.get("auc_before"), probe.get("auc_after"), None, None,
                 probe.get("reading", ""), "Min-K%++ AUC; " + probe.get("definition", ""))]  # fmt: skip


def _linear_probe(name: str, probe: dict[str, Any], _: float | None) -> list[dict[str, Any]]:
    layers = probe.get("layers", [])
    last = layers[-1] if layers else {}
    retrained = last.get("released_retrained") or {}
    budget = (
        f"logistic regression, {probe.get('tokens')} {probe.get('row_kind', 'tokens')}, "
        f"layers {', '.join(str(r['layer']) for r in layers)}"
    )
    definition = (
        "balanced accuracy at the last layer (base -> released, retrained probe); "
        + probe.get("definition", "")
    )
    return [_row(name, budget, (last.get("base") or {}).get("value"), retrained.get("value"),
                 None, retrained.get("ci"), probe.get("reading", ""), definition)]  # fmt: skip


# A probe's rows, by its `audit.probes` key (`rrtool.audit.PROBES`; a test keeps them equal).
ROWS = {
    "relearning": _relearning,
    "relearning_ood": _relearning,
    "elicitation": _elicitation,
    "membership": _membership,
    "quantization": _quantization,
    "linear_probe": _linear_probe,
}
