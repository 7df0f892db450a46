"""The report in three formats from the same collected data (``collect.collect``).

JSON is the data itself. Markdown and HTML present it for a reviewer: the verdict first
(headline forget and utility, before -> after), then how it was reached (per-step table and
curves, weight-search candidates, Reveal's search), the evidence (answers side by side), the
caveats (probes, which scorer produced each number), the cost, and the exact spec. HTML is a
single file: inline CSS and SVG, no script, nothing fetched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from rrtool.audit.battery import battery
from rrtool.audit.charts import line_chart
from rrtool.audit.verdict import shown

FORMATS = ("html", "md", "json")


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n"
    if fmt == "md":
        return _markdown(report)
    if fmt == "html":
        return _html(report)
    raise ValueError(f"unknown report format {fmt!r} (expected one of {', '.join(FORMATS)})")


# ------------------------------------------------------------------ shared bits
def num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if value != value:
            return "NaN"
        return f"{value:.{digits}g}"
    return str(value)


def change(row: dict[str, Any]) -> str:
    rel = row.get("relative_change")
    return "–" if rel is None else f"{rel * 100:+.1f}%"


def _title(report: dict[str, Any]) -> str:
    spec = report.get("spec") or {}
    return f"rrtool audit: {spec.get('name') or report['run']['name']}"


def _facts(report: dict[str, Any]) -> list[tuple[str, str]]:
    run, spec = report["run"], report.get("spec") or {}
    target = spec.get("target") or {}
    model = report.get("model") or {}
    facts = [
        ("Target", target.get("description", "–")),
        ("Forget types", ", ".join(target.get("forget_types") or []) or "–"),
        (
            "Model",
            f"{model.get('ref', '–')} ({num(model.get('parameters'), 6)} parameters, "
            f"{model.get('dtype', '?')} on {model.get('device', '?')})",
        ),
        ("Run", f"{run['id']} ({run['name']}, experiment {run['experiment']})"),
        ("Status", run["status"] + (f": {run['stop_reason']}" if run.get("stop_reason") else "")),
        *(
            [("Taken over", f"--resume --force over {run['resume_forced']} (another host)")]
            if run.get("resume_forced")
            else []
        ),
        ("Release strategy", _strategy(spec)),
        ("Release stopped", report["release"].get("stop_reason") or "–"),
        ("Leakage", _leakage_text(report["audit"].get("leakage"))),
        ("Store", run["store"]),
        ("Started / ended", f"{run.get('started') or '–'} / {run.get('ended') or '–'}"),
        ("rrtool", f"{run.get('rrtool_version') or '?'} (git {run.get('git_sha') or 'unknown'})"),
        ("Report generated", report["generated_at"]),
    ]
    return facts


def _leakage_text(leakage: dict[str, Any] | None) -> str:
    """How many audit prompts hold a context that Reveal or the weight search saw."""
    if not leakage:
        return "not checked (run before the check existed)"
    parts = [
        f"{name}: {row['exact'] + row['near_duplicate']} of {row['prompts']} audit prompts "
        f"({row['exact']} exact, {row['near_duplicate']} near-duplicate)"
        for name, row in leakage["sources"].items()
    ]
    return "; ".join(parts) + (" — WARNING: not held out" if leakage.get("warn") else "")


def _strategy(spec: dict[str, Any]) -> str:
    """How the forget data became an edit, and where the forget data came from."""
    release = spec.get("release") or {}
    strategy = release.get("strategy") or "iterative"
    source = release.get("forget_data")
    origin = f"external forget data {source.get('path')}" if source else "Reveal's forget data"
    return f"{strategy} ({origin})"


def with_ci(value: Any, interval: Sequence[float] | None, digits: int = 4) -> str:
    """``0.364 [0.251, 0.470]``: a value and its 95% interval (the value alone without one)."""
    if not interval:
        return num(value, digits)
    return f"{num(value, digits)} [{num(interval[0], 3)}, {num(interval[1], 3)}]"


def held_out_label(row: dict[str, Any]) -> str:
    data = row.get("data") or {}
    if not data:
        return "data not recorded"
    return "held-out" if data.get("held_out") else "IN-SAMPLE"


def _metric_label(line: dict[str, Any], key: str) -> str:
    """A side metric scored on another measurement's queries says whose."""
    of = line.get("of")
    return line["metric"] if of in (None, key) else f"{line['metric']} ({of} queries)"


def _summary_rows(report: dict[str, Any]) -> list[list[str]]:
    audit = report["audit"]
    rows = []
    for key, row in (audit.get("summary") or {}).items():
        side = (audit.get("after") or {}).get(key) or (audit.get("before") or {}).get(key) or {}
        data = row.get("data") or {}
        label = key
        if key == "worst":  # the grid's worst held-out cell (``rrtool.audit.grid``)
            label = f"forget, worst case ({row.get('set')} / {row.get('phrasing')})"
        lines = [(label, row, shown(row))]
        lines += [(f"{key} (also)", extra, "") for extra in row.get("also", [])]
        for label, line, verdict in lines:
            rows.append(
                [
                    label,
                    _metric_label(line, key),
                    with_ci(line["before"], line.get("before_ci")),
                    with_ci(line["after"], line.get("after_ci")),
                    with_ci(line.get("change"), line.get("change_ci")),
                    verdict,
                    (data.get("text") or held_out_label(row)) if line is row else "",
                    side.get("scorer", "–"),
                    side.get("definition", "–") if line is row else "",
                ]
            )
    return rows


GRID_HEAD = [
    "set",
    "phrasing",
    "held out in",
    "measure",
    "base [95% CI]",
    "released [95% CI]",
    "change [paired 95% CI]",
    "released / base",
    "verdict",
]


def grid_rows(grid: dict[str, Any] | None) -> list[list[str]]:
    """The audit's grid (``rrtool.audit.grid``): every set and phrasing, base and released."""
    rows = []
    worst = (grid or {}).get("worst") or {}
    for row in (grid or {}).get("rows") or []:
        mark = (
            " (worst)"
            if (row["set"], row["phrasing"]) == (worst.get("set"), worst.get("phrasing"))
            else ""
        )
        head = [row["set"], row["phrasing"] + mark, row.get("held_out") or "neither"]
        if row.get("error"):
            rows.append([*head, "–", "–", "–", "–", "–", f"not measured: {row['error']}"])
            continue
        for key in ("forget", "utility"):
            line = row.get(key)
            if not line:
                continue
            rows.append(
                [
                    *head,
                    f"{key}: {line['metric']}",
                    with_ci(line["before"], line.get("before_ci")),
                    with_ci(line["after"], line.get("after_ci")),
                    with_ci(line.get("change"), line.get("change_ci")),
                    num(line["ratio"], 3) if line.get("ratio") is not None else "–",
                    shown(line)
                    + (
                        f" (not in the worst case: {line['excluded']})"
                        if line.get("excluded")
                        else ""
                    ),  # fmt: skip
                ]
            )
    return rows


SUMMARY_HEAD = [
    "measure",
    "metric",
    "before [95% CI]",
    "after [95% CI]",
    "change [paired 95% CI]",
    "verdict",
    "data",
    "scorer",
    "definition",
]


def _metric_rows(report: dict[str, Any]) -> list[list[str]]:
    before = report["audit"].get("before") or {}
    after = report["audit"].get("after") or {}
    rows = []
    for key in dict.fromkeys([*before, *after]):
        b_side, a_side = before.get(key) or {}, after.get(key) or {}
        b, a = b_side.get("metrics", {}), a_side.get("metrics", {})
        b_ci, a_ci = b_side.get("intervals", {}), a_side.get("intervals", {})
        for name in dict.fromkeys([*b, *a]):
            rows.append(
                [
                    key,
                    name,
                    with_ci(b.get(name), b_ci.get(name)),
                    with_ci(a.get(name), a_ci.get(name)),
                ]
            )
    return rows


def _step_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for s in report["steps"]:
        coefficient = s["coefficient"]
        applied = "–" if coefficient is None else f"{coefficient:+.4g} x {s['module']}"
        rows.append(
            [
                str(s["step"]),
                s["module"],
                applied,
                with_ci(s["forget"], s.get("forget_ci")),
                with_ci(s["utility"], s.get("utility_ci")),
                s.get("weight_from") or "–",
                "reverted"
                if s.get("reverted")
                else (f"failed: {s['failed']}" if s.get("failed") else ""),
            ]
        )
    return rows


STEP_HEAD = ["step", "module", "weight applied", "forget score", "utility", "weight from", ""]


def _candidate_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [
            str(c["step"]),
            c["module"],
            num(c["weight"]),
            "not measured" if c.get("decided_early") else with_ci(c["s"], c.get("s_ci")),
            with_ci(c["u"], c.get("u_ci")),
            "–" if c.get("decided_early") else num(c.get("objective")),
            num(c.get("accepted")),
            f"rejected early on {c.get('prompts')} prompts: utility below the threshold"
            if c.get("decided_early")
            else c.get("rule")
            or ("below the per-step utility floor" if c.get("feasible") is False else ""),
            f"chosen ({c['reason']})" if c.get("chosen") else "",
        ]
        for c in report["release"]["candidates"]
    ]


CANDIDATE_HEAD = [
    "step",
    "module",
    "weight",
    "forget [95% CI]",
    "utility [95% CI]",
    "objective J",
    "acceptable",
    "accepted by",
    "",
]


def _module_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [m["name"], m["kind"], f"{m['coefficient']:+.4g}", m["sha256"], num(m.get("bytes"), 9)]
        for m in report["release"]["modules"]
    ]


def _phase_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Head and rows of the phases table; the GPU column only for runs that used a GPU."""
    phases = report["phases"]
    gpu = any(p.get("peak_gpu_mb") is not None for p in phases)
    head = ["phase", "state", "seconds", "peak memory (MB)"]
    rows = [
        [p["name"], "done" if p["done"] else "not done", num(p["seconds"]), num(p["peak_rss_mb"])]
        for p in phases
    ]
    if gpu:
        head.append("peak GPU memory (MB)")
        for row, p in zip(rows, phases, strict=True):
            row.append(num(p.get("peak_gpu_mb")))
    return head, rows


def describe(name: str, probe: dict[str, Any]) -> str:
    """One line for the console: the probe's battery rows (``rrtool.audit.battery``)."""
    parts = []
    for row in battery({name: probe}, probe.get("before")):
        text = f"{row['attack']}: "
        if row["base"] is not None or row["released"] is not None:
            text += f"{_fmt(row['base'])} (base) -> {_fmt(row['released'])} (released)"
            if row["attacked"] is not None:
                text += f" -> {with_ci(row['attacked'], row['attacked_ci'])} under attack"
            text += ": "
        parts.append(text + row["verdict"])
    return "; ".join(parts)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _elicitation_rows(report: dict[str, Any]) -> list[list[str]]:
    probe = (report["audit"].get("probes") or {}).get("elicitation") or {}
    return [
        [
            v["name"],
            with_ci(v.get("base"), v.get("base_ci")),
            with_ci(v["value"], v.get("ci")),
            with_ci(v.get("change"), v.get("change_ci")),
            v.get("verdict") or "–",
            _short(v["template"], 160),
        ]
        for v in probe.get("variants", [])
    ]


ELICITATION_HEAD = [
    "phrasing",
    "base [95% CI]",
    "released [95% CI]",
    "change [paired 95% CI]",
    "verdict",
    "template",
]


BATTERY_HEAD = ["attack", "budget", "base", "released", "under attack [95% CI]", "verdict",
                "probe s", "definition"]  # fmt: skip


def _battery_cost(report: dict[str, Any]) -> str:
    """The probes' wall time against the audit's own measurements, when the run recorded
    both (an audit measured in one process)."""
    seconds = report["audit"].get("seconds") or {}
    measured, probes = seconds.get("measurements"), seconds.get("probes")
    if not measured or probes is None:
        return ""
    return (
        f"The probes took {probes:.0f} s, {100 * probes / measured:.0f}% of the time of the "
        f"audit's own measurements ({measured:.0f} s, base and released model; the membership "
        "probe's base-model scoring counts as the probes')."
    )


def _probe_rows(report: dict[str, Any]) -> list[list[str]]:
    """The attack battery (``rrtool.audit.battery``): one row per attack."""
    probes = report["audit"].get("probes") or {}
    before = ((report["audit"].get("summary") or {}).get("forget") or {}).get("before")
    return [
        [
            r["attack"],
            r["budget"],
            num(r["base"]),
            num(r["released"]),
            with_ci(r["attacked"], r["attacked_ci"]) if r["attacked"] is not None else "–",
            r["verdict"],
            num(r.get("seconds")),
            r["definition"],
        ]  # fmt: skip
        for r in battery(probes, before)
    ]


def _reveal_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [k.removeprefix("reveal/"), num(v)] for k, v in sorted(report["reveal"]["metrics"].items())
    ]


def _similarity_rows(report: dict[str, Any]) -> list[list[str]]:
    return [[str(r["iteration"]), num(r["mean"])] for r in report["release"]["similarity"]]


def _environment_rows(report: dict[str, Any]) -> list[list[str]]:
    return [[k, str(v)] for k, v in (report.get("environment") or {}).items()]


# --------------------------------------------------------------------- markdown
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = list(rows)
    if not rows:
        return "_nothing recorded_\n"
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _markdown(report: dict[str, Any]) -> str:
    out = [f"# {_title(report)}\n"]
    spec = report.get("spec") or {}
    if spec.get("description"):
        out.append(spec["description"].strip() + "\n")
    out.append(md_table(["fact", "value"], _facts(report)))
    grid = report["audit"].get("grid")
    if grid:
        out.append("\n## Forgetting across sets and phrasings\n")
        out.append(f"{grid.get('definition', '')}\n")
        out.append(md_table(GRID_HEAD, grid_rows(grid)))
    out.append("\n## Result\n")
    out.append(md_table(SUMMARY_HEAD, _summary_rows(report)))
    out.append("\n### All metrics\n")
    out.append(md_table(["measure", "metric", "before", "after"], _metric_rows(report)))
    out.append("\n## Release: step by step\n")
    out.append(md_table(STEP_HEAD, _step_rows(report)))
    out.append("\n### Weight-search candidates\n")
    out.append(md_table(CANDIDATE_HEAD, _candidate_rows(report)))
    out.append("\n### Retain/forget update similarity (mean over layers)\n")
    out.append(md_table(["iteration", "similarity"], _similarity_rows(report)))
    out.append("\n### Modules\n")
    out.append(md_table(["module", "kind", "weight", "sha256", "bytes"], _module_rows(report)))
    out.append("\n## Reveal\n")
    out.append(md_table(["metric", "value"], _reveal_rows(report)))
    trials = report["reveal"]["trials"]
    if trials:
        out.append(f"\n{len(trials)} search trials recorded (see the HTML report for the curve).\n")
    out.append("\n## Answers before and after\n")
    for key, rows in report["audit"]["answers"].items():
        out.append(f"\n### {key}\n")
        for row in rows:
            out.append(
                f"\n**{_md_cell(row['id'])}** — {_md_cell(_short(row['prompt'], 300))}\n\n"
                f"- before ({num(row['score_before'])}): `{_inline(row['before'])}`\n"
                f"- after ({num(row['score_after'])}): `{_inline(row['after'])}`\n"
            )
    out.append("\n## Attack battery (robustness probes)\n")
    if cost := _battery_cost(report):
        out.append(f"\n{cost}\n")
    out.append(md_table(BATTERY_HEAD, _probe_rows(report)))
    elicitation = _elicitation_rows(report)
    if elicitation:
        out.append("\n### Elicitation variants\n")
        out.append(md_table(ELICITATION_HEAD, elicitation))
    out.append("\n## Cost\n")
    out.append(md_table(*_phase_table(report)))
    out.append("\n## Environment\n")
    out.append(md_table(["package", "version"], _environment_rows(report)))
    out.append(
        "\n## Spec (resolved)\n\n```yaml\n" + (report.get("spec_yaml") or "").rstrip() + "\n```\n"
    )
    return "\n".join(out)


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _inline(text: str) -> str:
    return _short(text, 400).replace("`", "'") or " "


# ------------------------------------------------------------------------- html
CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d1d1f;margin:0;background:#fafafa}
main{max-width:1080px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
.verdict{display:flex;gap:16px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #ccc;border-radius:6px;padding:10px 16px;min-width:220px}
.card .v{font-size:22px;font-weight:600}.muted{color:#666}
.facts th{width:160px;background:#f7f7f7}
pre{background:#f6f6f6;padding:10px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:8px}.pair div{background:#f6f6f6;padding:6px 8px;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px}
.answer{border:1px solid #e3e3e3;border-radius:4px;padding:8px;margin:8px 0;page-break-inside:avoid}
.warn{background:#fff6e0;border:1px solid #e7c76b;padding:8px 12px;border-radius:4px}
@media print{body{background:#fff}main{padding:0}h2{page-break-after:avoid}svg{max-width:100%}}
"""


def html_table(
    head: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = ()
) -> str:
    rows = list(rows)
    if not rows:
        return '<p class="muted">nothing recorded</p>'
    h = "".join(f"<th>{escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{escape(c)}</td>' if i in numeric else f"<td>{escape(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _facts_html(report: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in _facts(report))
    return f'<table class="facts"><tbody>{rows}</tbody></table>'


def _cards(report: dict[str, Any]) -> str:
    cards = []
    for key, row in (report["audit"].get("summary") or {}).items():
        ci = row.get("change_ci")
        noise = f" (paired 95% CI {num(ci[0], 3)} to {num(ci[1], 3)})" if ci else ""
        cards.append(
            f'<div class="card"><div class="muted">{escape(key)}: {escape(row["metric"])} '
            f"({escape(row['better'])} is better; {escape(held_out_label(row))})</div>"
            f'<div class="v">{escape(num(row["before"]))} → {escape(num(row["after"]))}</div>'
            f'<div class="muted">{escape(change(row))}{escape(noise)}</div>'
            f"<div><b>{escape(row.get('verdict') or '–')}</b></div>"
            + (f'<div class="warn">but {escape(row["caveat"])}</div>' if row.get("caveat") else "")
            + "</div>"
        )
    if not cards:
        return '<p class="warn">No audit measurements in this run (the audit phase did not finish).</p>'
    return f'<div class="verdict">{"".join(cards)}</div>'


def _step_chart(report: dict[str, Any]) -> str:
    steps = [s for s in report["steps"] if not s.get("reverted")]
    return line_chart(
        [
            ("forget score", [(s["step"], s["forget"]) for s in steps if s["forget"] is not None]),
            ("utility", [(s["step"], s["utility"]) for s in steps if s["utility"] is not None]),
        ],
        title="Forget score and utility after each applied module",
        x_label="step (0 = base model)",
        y_label="score",
    )


def _search_chart(report: dict[str, Any]) -> str:
    trials = [t for t in report["reveal"]["trials"] if t.get("trial") is not None]
    best, curve = float("-inf"), []
    for t in trials:
        best = max(best, t["score"])
        curve.append((t["trial"], best))
    return line_chart(
        [
            ("trial score", [(t["trial"], t["score"]) for t in trials]),
            ("best so far", curve),
        ],
        title="Reveal: instruction search",
        x_label="trial",
        y_label="score (harmonic mean of relevance and diversity)",
    )


def _answers_html(report: dict[str, Any]) -> str:
    parts = []
    for key, rows in report["audit"]["answers"].items():
        parts.append(f"<h3>{escape(key)}</h3>")
        if not rows:
            parts.append('<p class="muted">no answers recorded</p>')
        for row in rows:
            ref = row.get("reference") or {}
            gold = ref.get("entities")
            gold_html = (
                f' <span class="muted">gold: {escape(json.dumps(gold, ensure_ascii=False))}</span>'
                if gold is not None
                else ""
            )
            parts.append(
                f'<div class="answer"><div><b>{escape(row["id"])}</b> {escape(_short(row["prompt"], 400))}'
                f"{gold_html}</div>"
                f'<div class="pair"><div><span class="muted">before ({escape(num(row["score_before"]))})</span>\n'
                f'{escape(row["before"])}</div><div><span class="muted">after ({escape(num(row["score_after"]))})'
                f"</span>\n{escape(row['after'])}</div></div></div>"
            )
    return "".join(parts)


def _linear_probe_html(report: dict[str, Any]) -> str:
    probe = (report["audit"].get("probes") or {}).get("linear_probe") or {}
    if probe.get("status") != "done":
        return ""
    series = [
        (
            label,
            [(r["layer"], r[key]["value"]) for r in probe["layers"] if r[key]["value"] is not None],
        )
        for label, key in (
            ("base", "base"),
            ("released, base probe", "released_base_probe"),
            ("released, retrained", "released_retrained"),
        )
    ]
    return "<h3>Linear probe: balanced accuracy per layer (0.5 = chance)</h3>" + line_chart(
        series, title="linear probe", x_label="layer", y_label="balanced accuracy"
    )


def _grid_html(report: dict[str, Any]) -> list[str]:
    grid = report["audit"].get("grid")
    if not grid:
        return []
    return [
        "<h2>Forgetting across sets and phrasings</h2>",
        f'<p class="muted">{escape(grid.get("definition", ""))}</p>',
        html_table(GRID_HEAD, grid_rows(grid)),
    ]


def _elicitation_html(report: dict[str, Any]) -> str:
    rows = _elicitation_rows(report)
    if not rows:
        return ""
    return (
        "<h3>Elicitation: the forget measure per held-out phrasing, base and released</h3>"
        + html_table(ELICITATION_HEAD, rows)
    )


def _html(report: dict[str, Any]) -> str:
    title = _title(report)
    spec = report.get("spec") or {}
    run = report["run"]
    sections = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">{escape((spec.get("description") or "").strip())}</p>',
        _cards(report),
    ]
    if run["status"] != "finished":
        sections.append(
            f'<p class="warn">This run is <b>{escape(run["status"])}</b>'
            f"{': ' + escape(run['stop_reason']) if run.get('stop_reason') else ''}. "
            "The report shows what was recorded so far.</p>"
        )
    sections += [
        _facts_html(report),
        *_grid_html(report),
        "<h2>Result</h2>",
        html_table(SUMMARY_HEAD, _summary_rows(report)),
        "<h3>All metrics</h3>",
        html_table(
            ["measure", "metric", "before [95% CI]", "after [95% CI]"], _metric_rows(report)
        ),
        "<h2>Release: step by step</h2>",
        _step_chart(report),
        html_table(STEP_HEAD, _step_rows(report), numeric=(0,)),
        "<h3>Weight-search candidates</h3>",
        html_table(CANDIDATE_HEAD, _candidate_rows(report), numeric=(0, 2, 5)),
        "<h3>Retain/forget update similarity (mean over layers, ||U1ᵀU2||_F / k)</h3>",
        html_table(["iteration", "similarity"], _similarity_rows(report), numeric=(1,)),
        "<h3>Modules (the applied stack)</h3>",
        html_table(
            ["module", "kind", "weight", "sha256", "bytes"], _module_rows(report), numeric=(2, 4)
        ),
        "<h2>Reveal</h2>",
        _search_chart(report),
        html_table(["metric", "value"], _reveal_rows(report), numeric=(1,)),
        "<h2>Answers before and after</h2>",
        _answers_html(report),
        "<h2>Attack battery (robustness probes)</h2>",
        f"<p>{escape(_battery_cost(report))}</p>" if _battery_cost(report) else "",
        html_table(BATTERY_HEAD, _probe_rows(report), numeric=(2, 3, 6)),
        _elicitation_html(report),
        _linear_probe_html(report),
        "<h2>Cost</h2>",
        html_table(*_phase_table(report), numeric=(2, 3, 4)),
        "<h2>Environment</h2>",
        html_table(["package", "version"], _environment_rows(report)),
        "<h2>Spec (resolved)</h2>",
        f"<pre>{escape(report.get('spec_yaml') or '')}</pre>",
    ]
    body = "\n".join(s for s in sections if s)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>\n{body}\n</main></body></html>\n"
    )
