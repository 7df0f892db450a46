"""The ``rrtool`` command line: thin click commands over the library.

Only click is imported at module level so ``rrtool --help`` stays fast; every
command imports what it needs when it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from rrtool import __version__
from rrtool.audit import PROBES
from rrtool.errors import UserError

SET_HELP = (
    "Override a spec key, typed like the field: --set release.iterations=5 (repeatable). "
    "A relative path given so is relative to the spec file's folder, as in the file."
)


def _print_errors(messages: list[str]) -> None:
    for message in messages:
        click.secho(f"error: {message}", fg="red", err=True)


class _Group(click.Group):
    """Turns ``UserError`` into its message and exit code 2, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            _print_errors(exc.messages)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="yellow", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rrtool")
def cli() -> None:
    """Make a language model forget a target without a curated forget set.

    Write one YAML spec, check it with `rrtool plan SPEC`, run it with
    `rrtool run SPEC`. See `rrtool spec reference` for every key.
    """


def _spec_argument(func: Any) -> Any:
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(
        func
    )
    return click.argument("spec_path", metavar="SPEC")(func)


@cli.command()
@_spec_argument
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (a `phases` list).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (overrides the spec).")
@click.option(
    "--throughput",
    type=click.FloatRange(min=0.001),
    default=None,
    metavar="TOKENS_PER_S",
    help="Generation speed the time estimate assumes (default: SmolLM2-135M's on 2 CPU cores, "
    "scaled by parameter count).",
)
def plan(
    spec_path: str,
    overrides: tuple[str, ...],
    as_json: bool,
    tracking_uri: str | None,
    throughput: float | None,
) -> None:
    """Validate SPEC, check its inputs, and show the phases it will run and what they cost."""
    from rrtool.plan import build_plan
    from rrtool.spec_loader import load_spec

    result = build_plan(load_spec(spec_path, overrides), tracking_uri, throughput)
    if as_json:
        import json

        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        from rrtool.console import print_plan

        print_plan(result)


@cli.command()
@_spec_argument
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (overrides the spec).")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the newest unfinished run of this spec (same file and --set overrides), "
    "unless a live process of this host still runs it.",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --resume: take over a run marked running by a process on another host, which "
    "cannot be checked from here (recorded on the run as rrtool.resume_forced).",
)
@click.option(
    "--phase",
    type=click.Choice(["reveal", "release", "audit", "all"]),
    default="all",
    show_default=True,
    help="Run only up to and including this phase.",
)
def run(
    spec_path: str,
    overrides: tuple[str, ...],
    tracking_uri: str | None,
    resume: bool,
    force: bool,
    phase: str,
) -> None:
    """Run SPEC: plan, then Reveal, Release and Audit, all recorded in MLflow."""
    from rrtool.runner import PHASES, run_spec
    from rrtool.spec_loader import load_spec

    phases = PHASES if phase == "all" else PHASES[: PHASES.index(phase) + 1]
    run_spec(
        load_spec(spec_path, overrides), tracking_uri, resume=resume, force=force, phases=phases
    )


def _existing_store(tracking_uri: str | None) -> Any:
    """The store a reader means: flag, else MLFLOW_TRACKING_URI, else the embedded default,
    which must already exist here (reading must not create an empty store)."""
    from rrtool.tracking import DEFAULT_DB, resolve_store

    store = resolve_store(tracking_uri, None)
    if store.origin == "embedded default" and not (Path.cwd() / DEFAULT_DB).exists():
        raise UserError(
            f"no tracking store here ({DEFAULT_DB} not found in {Path.cwd()}); run from the "
            "directory of `rrtool run`, or give --tracking-uri / set MLFLOW_TRACKING_URI"
        )
    return store


@cli.command()
@click.argument("run_ref", metavar="[RUN]", required=False)
@click.option(
    "--report",
    "fmt",
    type=click.Choice(["html", "md", "json"]),
    default=None,
    help="Report format (default: the run's spec audit.report, else html).",
)
@click.option(
    "--out",
    default=None,
    metavar="PATH",
    help="Where to write it (default: audit-RUNID.EXT here; '-' = stdout).",
)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db).",
)
def audit(run_ref: str | None, fmt: str | None, out: str | None, tracking_uri: str | None) -> None:
    """Write the audit report of RUN (id, id prefix or name; default: the latest run),
    read from the MLflow store alone."""
    from rrtool.audit.collect import collect
    from rrtool.audit.render import render

    report = collect(_existing_store(tracking_uri), run_ref)
    fmt = fmt or ((report.get("spec") or {}).get("audit") or {}).get("report") or "html"
    text = render(report, fmt)
    if out == "-":
        click.echo(text, nl=False)
        return
    path = Path(out or f"audit-{report['run']['id'][:12]}.{fmt}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot write the report ({exc.strerror})") from None
    click.echo(
        f"{fmt} report of run {report['run']['id']} written to {path} "
        f"({path.stat().st_size:,} bytes)",
        err=True,
    )


@cli.command()
@click.argument("run_refs", metavar="RUN RUN [RUN ...]", nargs=-1, required=True)
@click.option(
    "--report",
    "fmt",
    type=click.Choice(["table", "html", "md", "json"]),
    default="table",
    show_default=True,
    help="`table` prints to the terminal; the others write a file (or stdout with --out -).",
)
@click.option(
    "--out",
    default=None,
    metavar="PATH",
    help="Where to write html/md/json (default: compare-RUNID-RUNID....EXT here; '-' = stdout).",
)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db).",
)
def compare(run_refs: tuple[str, ...], fmt: str, out: str | None, tracking_uri: str | None) -> None:
    """Compare runs side by side: forget and utility metrics, weights, cost."""
    from rrtool.compare import compare as compare_runs
    from rrtool.compare import render_compare, table_rows

    if len(run_refs) < 2:
        raise UserError("compare: give at least two runs (ids, id prefixes or names)")
    data = compare_runs(_existing_store(tracking_uri), list(run_refs))
    if fmt == "table":
        from rich.console import Console

        from rrtool.console import folding_table

        head, rows = table_rows(data)
        table = folding_table(*head)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    text = render_compare(data, fmt)
    if out == "-":
        click.echo(text, nl=False)
        return
    # As `rrtool audit`: a file named after the runs, unless told otherwise.
    path = Path(out or f"compare-{'-'.join(r['id'][:8] for r in data['runs'])}.{fmt}")
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot write the comparison ({exc.strerror})") from None
    click.echo(f"comparison written to {path}", err=True)


@cli.command()
@click.argument("run_ref", metavar="[RUN]", required=False)
@click.option(
    "--probe",
    "probes",
    multiple=True,
    type=click.Choice(PROBES),
    help="A probe to run (repeatable; default: all of them).",
)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db).",
)
def attack(run_ref: str | None, probes: tuple[str, ...], tracking_uri: str | None) -> None:
    """Run more robustness probes on RUN (default: the latest run) after its audit, without
    retraining: the released model is rebuilt from the run, the results go into the same
    run's audit/probes.json (and so its report)."""
    from rich.console import Console

    from rrtool.audit.attack import attack_run

    found = attack_run(_existing_store(tracking_uri), run_ref, probes, Console(stderr=True))
    click.echo(f"recorded probes: {', '.join(found)}", err=True)


@cli.command()
@click.argument("run_ref", metavar="[RUN]", required=False)
@click.option(
    "--out", required=True, metavar="DIR", help="Directory for the checkpoint or adapter."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["merged", "peft"]),
    default="merged",
    show_default=True,
    help="merged: a transformers checkpoint with the modules applied (the run's weights bit "
    "for bit); peft: one PEFT LoRA adapter on the base model (rank = the modules' ranks "
    "summed, their signed weights folded in), equal to it up to float rounding.",
)
@click.option("--force", is_flag=True, help="Write into a non-empty --out.")
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db).",
)
def export(run_ref: str | None, out: str, fmt: str, force: bool, tracking_uri: str | None) -> None:
    """Write RUN's released model (default: the latest run), rebuilt from the base model and
    the run's recorded modules: a transformers checkpoint, or with --format peft one LoRA
    adapter that `PeftModel.from_pretrained(base, DIR)` loads."""
    from rrtool.export import export_run

    store = _existing_store(tracking_uri)
    manifest = export_run(store, run_ref, Path(out), force=force, fmt=fmt)
    what = (
        f"one LoRA adapter of rank {manifest['rank']} on {len(manifest['target_modules'])} "
        "module(s)"
        if fmt == "peft"
        else manifest["dtype"]
    )
    click.echo(
        f"run {manifest['run_id']}: {manifest['base_model']} + {len(manifest['stack'])} "
        f"module(s) written to {out} ({what})",
        err=True,
    )


@cli.command()
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db).",
)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def runs(tracking_uri: str | None, limit: int, as_json: bool) -> None:
    """List recent runs: status and headline numbers."""
    import json

    from rich.console import Console

    from rrtool.audit.collect import list_runs
    from rrtool.console import folding_table

    rows = list_runs(_existing_store(tracking_uri), limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = folding_table("run", "spec", "status", "started", "forget", "utility", "stop reason")
    for r in rows:
        table.add_row(
            r["id"][:8],  # what `rrtool audit`, `attack` and `export` accept as a prefix
            r["spec"] or "",
            r["status"],
            (r["started"] or "")[:16].replace("T", " "),  # to the minute, UTC
            (r["forget"] or {}).get("text", ""),
            (r["utility"] or {}).get("text", ""),
            r["stop_reason"] or "",
        )
    Console().print(table)


@cli.group(cls=_Group)
def spec() -> None:
    """The spec format: JSON Schema and reference."""


@spec.command()
def schema() -> None:
    """Print the spec's JSON Schema."""
    import json

    from rrtool.spec import Spec

    click.echo(json.dumps(Spec.model_json_schema(), indent=2))


@spec.command()
def reference() -> None:
    """Print the spec reference (Markdown), as in docs/spec-reference.md."""
    from rrtool.spec_docs import spec_reference

    click.echo(spec_reference(), nl=False)


@cli.group(cls=_Group)
def oracles() -> None:
    """Relevance oracles: plugins that score how much of the target a text shows."""


@oracles.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON: each oracle with what it needs.")
def oracles_list(as_json: bool) -> None:
    """List installed oracle plugins (name, distribution, description)."""
    import dataclasses
    import json
    import warnings

    from rrtool.console import print_oracles
    from rrtool.oracles.registry import PluginWarning, list_oracles

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)
        infos = list_oracles()
    for warning in caught:
        click.secho(f"warning: {warning.message}", fg="yellow", err=True)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return
    print_oracles(infos)


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    from rrtool.spec_loader import load_yaml

    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--option {pair}: expected KEY=VALUE (e.g. --option timeout=5)")
        key, raw = pair.split("=", 1)
        try:
            options[key.strip()] = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            options[key.strip()] = raw
    return options


@oracles.command("score")
@click.argument("name")
@click.option(
    "--input", "input_path", required=True, metavar="FILE", help="Samples, JSON lines (- = stdin)."
)
@click.option(
    "--option", "pairs", multiple=True, metavar="KEY=VALUE", help="Oracle option (repeatable)."
)
def oracles_score(name: str, input_path: str, pairs: tuple[str, ...]) -> None:
    """Score samples with oracle NAME: one JSON line per sample to stdout, aggregate to stderr."""
    import json
    import math

    from rrtool.oracles.contract import OracleError
    from rrtool.oracles.registry import create_oracle
    from rrtool.oracles.samples import read_samples

    oracle = create_oracle(name, _parse_options(pairs))
    samples = read_samples(input_path)
    try:
        scores = oracle.score(samples)
    except OracleError as exc:
        click.secho(f"error: oracle `{name}` failed: {exc}", fg="red", err=True)
        raise SystemExit(1) from None
    if len(scores) != len(samples):
        raise UserError(f"oracle `{name}` returned {len(scores)} scores for {len(samples)} samples")
    for sample, score in zip(samples, scores, strict=True):
        value = float(score.score)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise UserError(
                f"oracle `{name}` scored sample {sample.id!r} {value} (expected [0, 1])"
            )
        click.echo(
            json.dumps(
                {"id": sample.id, "score": value, "details": dict(score.details)}, default=str
            )
        )
    click.echo(json.dumps(oracle.aggregate(samples, scores), default=str), err=True)


@oracles.command("samples")
@click.argument(
    "fmt",
    metavar="FORMAT",
    type=click.Choice(["universalner", "mbpp", "mbppplus", "gsm8k", "rtp", "jsonl", "text"]),
)
@click.argument("path", metavar="FILE")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N records only.")
def oracles_samples(fmt: str, path: str, limit: int | None) -> None:
    """Convert a public data file into oracle samples (JSON lines on stdout).

    The completion is the set's own answer (gold entities, reference code, the
    continuation); replace it with a model's output to score that model.
    """
    import json

    from rrtool.data import load_records
    from rrtool.spec import DataSource
    from rrtool.tasks import sample_to_json, samples_from_records

    records = load_records(DataSource(path=str(Path(path).resolve()), format=fmt, limit=limit))
    for sample in samples_from_records(fmt, records):
        click.echo(json.dumps(sample_to_json(sample), ensure_ascii=False))


def main() -> None:
    cli.main(prog_name="rrtool")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
