"""``zsqbench leaderboard build|show`` and ``zsqbench compare``; ``register(cli)`` adds them to the CLI.
Bad input raises UserError, which the ``zsqbench`` group turns into one red line and exit 2."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from zsqbench.spine.errors import UserError


def _console(stderr: bool = False):
    from rich.console import Console
    return Console(stderr=stderr)


@click.group("leaderboard")
def leaderboard():
    """Build leaderboards from run records and show them."""


@leaderboard.command("build")
@click.option("--protocol", "-p", required=True,
              help="Only records of this protocol (one version) may enter: its name, or its file (*.json).")
@click.argument("results", nargs=-1, required=True)
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
              help="Leaderboard JSON to write (default: leaderboard/<protocol>.json).")
@click.option("--methods", "-m", default=None,
              help="Only these methods' records (comma-separated), e.g. the rows a still-running grid has finished.")
@click.option("--notes", default=None, type=click.Path(dir_okay=False),
              help="JSON of CI half-width targets per model and bits and of notes on rows (the measured cause of a "
                   "spread or a collapse); schema: zsqbench/record/schema/leaderboard-notes.schema.json.")
def build(protocol, results, output, methods, notes):
    """Aggregate run records (files, or directories searched recursively) into a leaderboard JSON: one row per
    model@dataset, bits and method over seeds, headline = mean final top-1. Refuses records of another protocol
    or version, off-protocol records and duplicate seeds."""
    from zsqbench.frontends.sizes import with_sizes
    from zsqbench.frontends.transfer import with_transfer
    from zsqbench.leaderboard.build import apply_notes, build_leaderboard, read_notes, validate_leaderboard
    from zsqbench.leaderboard.collect import collect, require_clean
    from zsqbench.record.io import write_json_atomic
    if protocol.endswith(".json"):  # a protocol file, as `run`/`sweep -p FILE` took it: its name, and it registered
        from zsqbench.spine.registry import get_registry
        protocol = get_registry().protocol_name(protocol)
    out = Path(output or f"leaderboard/{protocol}.json")
    from zsqbench.spine.safety import check_output_file
    check_output_file(out, "--output", [*results, *([notes] if notes else [])], _is_leaderboard, "leaderboard")
    notes_obj = read_notes(notes, protocol) if notes else None  # bad notes fail before any work
    c = collect(results)
    require_clean(c, results)
    if methods:
        wanted = [m.strip() for m in methods.split(",") if m.strip()]
        found = {rec["method"]["name"] for _, rec in c.records}
        missing = [m for m in wanted if m not in found]
        if missing:
            raise UserError(f"no records of method(s) {', '.join(missing)} in {', '.join(results)} "
                            f"(methods there: {', '.join(sorted(found)) or 'none'})")
        c.records = [(p, rec) for p, rec in c.records if rec["method"]["name"] in wanted]
    command = shlex.join(["zsqbench", "leaderboard", "build", "--protocol", protocol, *results, "-o", str(out)]
                         + (["--methods", methods] if methods else []) + (["--notes", notes] if notes else []))
    lb = with_transfer(with_sizes(build_leaderboard(c.records, protocol, len(results), command=command)))
    if notes_obj:
        apply_notes(lb, notes_obj, notes)
    errors = validate_leaderboard(lb)
    if errors:  # a bug, not bad input: never write an invalid leaderboard
        raise UserError(f"the built leaderboard fails validation (not written): {'; '.join(errors[:3])}")
    write_json_atomic(out, lb)
    diverged = sum(r["diverged"] for r in lb["rows"])
    _console().print(f"wrote {out}: {len(lb['rows'])} rows from {len(c.records)} records of protocol {protocol} "
                     f"v{lb['protocol']['version']}" + (f" ([red]{diverged} diverged run(s)[/])" if diverged else "")
                     + f"; see `zsqbench leaderboard show {out}`", highlight=False, soft_wrap=True)


def _is_leaderboard(path: Path) -> bool:
    """A file ``leaderboard build`` may replace: a zsqbench leaderboard (anything else is not its to overwrite)."""
    from zsqbench.leaderboard.collect import looks_like_leaderboard
    try:
        return looks_like_leaderboard(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, ValueError):
        return False


@leaderboard.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--published", is_flag=True, help="Add the papers' published numbers where there are any.")
@click.option("--wide", is_flag=True, help="Every column (the default fits 80 columns).")
@click.option("--json", "as_json", is_flag=True, help="Print the validated leaderboard as JSON instead of a table.")
def show(file, published, wide, as_json):
    """Print a leaderboard: per model and bits, methods by mean final top-1 (★ best)."""
    from zsqbench.leaderboard.build import check_leaderboard
    from zsqbench.leaderboard.collect import looks_like_leaderboard
    from zsqbench.leaderboard.show import leaderboard_table
    from zsqbench.record.io import load_json
    lb = load_json(Path(file))
    if not looks_like_leaderboard(lb):
        raise UserError(f"{file} is not a zsqbench leaderboard (build one with `zsqbench leaderboard build`)")
    lb = check_leaderboard(lb, file)
    if as_json:
        click.echo(json.dumps(lb, indent=2))
        return
    leaderboard_table(lb, published=published, console=_console(), wide=wide)


@leaderboard.command("restat")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
              help="Where to write the result (default: FILE itself, rewritten atomically).")
def restat_command(file, output):
    """Recompute every derived statistic of a leaderboard (row summaries, power, the all-pairs tests, letters,
    rank intervals) from the per-seed runs it holds: no run records needed. Upgrades a leaderboard built by an
    older zsqbench (schema version 1); the runs, notes and provenance are kept."""
    from zsqbench.frontends.sizes import with_sizes
    from zsqbench.frontends.transfer import with_transfer
    from zsqbench.leaderboard.build import restat, validate_leaderboard
    from zsqbench.leaderboard.collect import looks_like_leaderboard
    from zsqbench.record.io import load_json, write_json_atomic
    lb = load_json(Path(file))
    if not looks_like_leaderboard(lb):
        raise UserError(f"{file} is not a zsqbench leaderboard (build one with `zsqbench leaderboard build`)")
    out = Path(output or file)
    if output:  # FILE itself is rewritten in place by design; another destination must be a leaderboard or new
        from zsqbench.spine.safety import check_output_file
        check_output_file(out, "--output", [], _is_leaderboard, "leaderboard")
    command = shlex.join(["zsqbench", "leaderboard", "restat", file] + (["-o", output] if output else []))
    try:
        new = with_transfer(with_sizes(restat(lb, command)))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{file}: rows or runs are malformed ({type(e).__name__}: {e}); rebuild it from its run "
                        "records with `zsqbench leaderboard build`") from None
    errors = validate_leaderboard(new)
    if errors:
        raise UserError(f"{file}: the recomputed leaderboard is not valid (not written): {'; '.join(errors[:3])}")
    write_json_atomic(out, new)
    _console().print(f"wrote {out}: statistics of {len(new['rows'])} rows recomputed from their runs; see "
                     f"`zsqbench leaderboard show {out}`", highlight=False, soft_wrap=True)


@click.command("compare")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--baseline", metavar="METHOD", default=None,
              help="Compare every method with METHOD within each model and bits (the inputs are pooled).")
@click.option("--test", type=click.Choice(["welch", "mannwhitney"]), default="welch", show_default=True,
              help="Test across seeds: Welch's t-test or Mann-Whitney U (two-sided).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Significance level.")
@click.option("--correction", type=click.Choice(["holm", "none"]), default="holm", show_default=True,
              help="Correct the p-values of each table's comparisons (Holm: family-wise error rate alpha per table).")
@click.option("--fail-if-worse", is_flag=True, help="Exit 1 when any row is significantly worse (for CI).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
@click.option("--wide", is_flag=True, help="Every column: std, n, inputs, notes (the default fits 80 columns).")
def compare(inputs, baseline, test, correction, alpha, fail_if_worse, as_json, wide):
    """Compare results across seeds. INPUTS are run records, result directories or leaderboard JSONs; without
    --baseline the first is the reference and each later one is compared with it row by row (same protocol,
    model, bits, method). Marks: + better, - worse (significant after --correction over each table's
    comparisons), ~ not significant, ? < 2 seeds, x protocol
    versions or teacher weights differ, or a side's row mixes code versions (not compared)."""
    from zsqbench.leaderboard.compare import compare_baseline, compare_inputs, load_side
    from zsqbench.leaderboard.show import comparison_table
    if baseline:
        result = compare_baseline(load_side(inputs), baseline, test, alpha, correction)
    else:
        if len(inputs) < 2:
            raise UserError("compare needs two or more inputs (the first is the reference), or --baseline METHOD")
        result = compare_inputs([load_side([p]) for p in inputs], test, alpha, correction)
    if not result["comparisons"]:
        raise UserError("nothing to compare: no (protocol, model, bits, method) row is shared"
                        + (f" with baseline {baseline}" if baseline else " between the reference and the others"))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        comparison_table(result, console=_console(), wide=wide)
    if fail_if_worse and result["worse"]:
        _console(stderr=True).print(f"[bold red]worse:[/] {result['worse']} row(s) significantly worse at "
                                    f"alpha {alpha}", highlight=False)
        sys.exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(leaderboard)
    cli.add_command(compare)


from zsqbench.leaderboard.site import site_command  # noqa: E402  (light at import: matplotlib loads on use)

leaderboard.add_command(site_command)
