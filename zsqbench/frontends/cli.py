"""The ``zsqbench`` command line."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from zsqbench.spine.errors import UserError

console = Console()
err_console = Console(stderr=True)


class Group(click.Group):
    """Bad input -> one line on stderr and exit 2; never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            if getattr(e, "exit_now", False):  # a stuck library thread (Ray's connect) would hold a normal exit
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(2)
            sys.exit(2)
        except click.UsageError as e:  # a bad option or value: one line too, not click's usage block
            where = e.ctx.command_path if e.ctx else "zsqbench"
            err_console.print(f"[bold red]error:[/] {escape(e.format_message())} (see `{escape(where)} --help`)",
                              highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/] (no record written)")
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zsqbench")
def cli():
    """zsqbench: run, score and compare zero-shot quantization methods."""


def _bits(bits, wbits, abits):
    w = wbits if wbits is not None else bits
    a = abits if abits is not None else bits
    if w is None or a is None:
        raise UserError("give --bits N (WNAN), or both --wbits and --abits")
    return w, a


@cli.command()
@click.option("--method", "-m", required=True, help="Method name (see `zsqbench list`).")
@click.option("--model", required=True, help="Teacher: an architecture (resnet20), arch@dataset (resnet20@fmnist) or "
              "your own network as package.module:factory (with --weights; docs/export.md).")
@click.option("--dataset", default=None, help="Dataset of the teacher (default: the protocol's).")
@click.option("--bits", type=int, default=None, help="Bit-width for weights and activations (W{N}A{N}).")
@click.option("--wbits", type=int, default=None, help="Weight bit-width (overrides --bits).")
@click.option("--abits", type=int, default=None, help="Activation bit-width (overrides --bits).")
@click.option("--protocol", "-p", default="cpu", show_default=True, help="Protocol (see `zsqbench list`).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--out", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the run record.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a setting (train.steps=100, distiller.temperature=4); marks the run off-protocol.")
@click.option("--synthesizer", default=None, help="Swap the method's synthesizer (ablation; off-protocol).")
@click.option("--distiller", default=None, help="Swap the method's distiller (ablation; off-protocol).")
@click.option("--quantizer", default=None, help="Swap the method's quantizer (ablation; off-protocol).")
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="Teacher state_dict to use instead of the embedded/pretrained one.")
@click.option("--teacher-card", default=None, type=click.Path(dir_okay=False),
              help="JSON with the teacher's input normalisation {mean, std, fit} (default: WEIGHTS.card.json beside "
                   "--weights, the manifest's for embedded teachers, else the dataset's).")
@click.option("--data-root", default=None, type=click.Path(), help="Where the evaluation data lives.")
@click.option("--cache-dir", default=None, type=click.Path(), help="pytorchcv weights / synthetic-set cache.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="Intra-op threads (default: what OMP_NUM_THREADS/MKL_NUM_THREADS give). The count changes the "
                   "order of float sums, so it is recorded; `zsqbench reproduce` re-runs with the same count.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--record-file", default=None, hidden=True, help="Write the record to exactly this file (sweeps).")
@click.option("--sweep-job", default=None, hidden=True, help="The sweep job hash to keep in the record.")
@click.option("--save-student", is_flag=True, help="Keep the quantized student (integer weights) beside the record.")
@click.option("--export", "export_dir", default=None, type=click.Path(),
              help="Also export the student to ONNX in this directory and measure it (implies --save-student).")
def run(method, model, dataset, bits, wbits, abits, protocol, seed, device, out, overrides, synthesizer,
        distiller, quantizer, weights, teacher_card, data_root, cache_dir, threads, quiet, record_file, sweep_job,
        save_student, export_dir):
    """Run one method on one teacher at one bit-width and write its record."""
    from zsqbench.spine.loop import RunSpec, run as run_job
    w, a = _bits(bits, wbits, abits)
    from zsqbench.spine.registry import get_registry
    spec = RunSpec(method=method, model=model, dataset=dataset, wbits=w, abits=a,
                   protocol=get_registry().protocol_name(protocol), seed=seed,
                   device=device, out=out, overrides=list(overrides), synthesizer=synthesizer,
                   distiller=distiller, quantizer=quantizer, weights=weights, teacher_card=teacher_card,
                   data_root=data_root,
                   cache_dir=cache_dir, quiet=quiet, record_file=record_file, sweep_job=sweep_job, threads=threads,
                   save_student=save_student or bool(export_dir), export_dir=export_dir)
    record, path = run_job(spec)
    _summary(record, path)
    if record["status"] != "ok":
        sys.exit(3)


@cli.command()
@click.option("--method", "-m", required=True, help="An image-optimisation method (intraq, hast, zeroq, ...).")
@click.option("--model", required=True, help="Teacher: an architecture (resnet20) or arch@dataset (resnet20@fmnist).")
@click.option("--dataset", default=None, help="Dataset of the teacher (default: the protocol's).")
@click.option("--protocol", "-p", default="cpu", show_default=True, help="Whose synthesis settings to use.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a setting (synthesizer.num_images=256); a run with the same settings reuses the set.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="Teacher state_dict to use instead of the embedded/pretrained one.")
@click.option("--cache-dir", default=None, type=click.Path(),
              help="Cache root (sets go to DIR/synthetic; default $ZSQBENCH_CACHE_DIR or ~/.cache/zsqbench).")
@click.option("--force", is_flag=True, help="Rebuild the set even if it is cached.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def synth(method, model, dataset, protocol, seed, device, overrides, weights, cache_dir, force, quiet):
    """Build a method's synthetic image set into the cache (or find it there) and write a PNG grid per class."""
    from zsqbench.frontends.synth import build_set
    from zsqbench.spine.cache import cache_base
    from zsqbench.spine.loop import RunSpec
    from zsqbench.spine.registry import get_registry
    from zsqbench.spine.safety import check_output_dir
    check_output_dir(cache_base(cache_dir), "--cache-dir")  # where the set and its grid go: before any work
    bits = get_registry().get("protocols", protocol)["bits"][0]  # the set does not depend on the bit-width
    spec = RunSpec(method=method, model=model, dataset=dataset, wbits=bits[0], abits=bits[1], protocol=protocol,
                   seed=seed, device=device, overrides=list(overrides), weights=weights, cache_dir=cache_dir,
                   quiet=quiet)
    stats = build_set(spec, force)
    how = ("found in the cache" if stats["cache"] == "hit" else
           f"built in {stats['wall_s']:.1f} s ({stats['image_iterations_per_s']:.0f} image-iterations/s)")
    console.print(f"{stats['images']} images x {stats['iterations']} iterations, {how}; the teacher classifies "
                  f"{100 * stats['teacher_agrees']:.1f} % as their label", highlight=False)
    console.print(escape(f"set:  {stats['cache_file']}\ngrid: {stats['png']}"), highlight=False, soft_wrap=True)


@cli.command()
@click.option("--protocol", "-p", required=True, help="The protocol whose grid to run (see `zsqbench list protocols`).")
@click.option("--methods", multiple=True, help="Only these methods (comma-separated or repeated; default: every "
              "registered method with settings for the protocol).")
@click.option("--models", multiple=True, help="Only these teachers (default: the protocol's).")
@click.option("--bits", multiple=True, help="Only these bit-widths: N or WxAy (default: the protocol's).")
@click.option("--seeds", multiple=True, help="Only these seeds (default: the protocol's; where the protocol has a seed "
              "rule, as many of its seeds as the rule gives each row).")
@click.option("--jobs", "-j", type=click.IntRange(1, 100000), default=None,
              help="Jobs at once (default 1; each gets cpu_count // jobs threads). With --backend ray: at most this "
                   "many (default: as many as the cluster's resources hold).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="Threads per job (overrides the split).")
@click.option("--out", "-o", default=None, type=click.Path(file_okay=False),
              help="Sweep directory (default: sweeps/<protocol>).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--retries", type=click.IntRange(0, 10), default=1, show_default=True,
              help="How often a failed job is run again.")
@click.option("--data-root", default=None, type=click.Path(), help="Where the evaluation data lives.")
@click.option("--cache-dir", default=None, type=click.Path(), help="pytorchcv weights / synthetic-set cache.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a setting in every job (learning curves, ablations): the records are off-protocol.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: child processes here; ray: tasks on an existing Ray cluster (docs/clusters.md).")
@click.option("--address", default=None, help="The Ray cluster (HOST:PORT of its head; default $RAY_ADDRESS or the "
              "cluster started on this machine). Only with --backend ray.")
@click.option("--ray-timeout", type=float, default=None, metavar="SECONDS",
              help="How long connecting to the Ray cluster may take (default: $ZSQBENCH_RAY_TIMEOUT or 30). Ray's own "
                   "logging stays out of the terminal unless ZSQBENCH_RAY_LOG=1.")
@click.option("--dry-run", is_flag=True, help="List the jobs and whether each is done; run nothing.")
@click.option("--save-student", is_flag=True, help="Keep each job's quantized student beside its record.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def sweep(protocol, methods, models, bits, seeds, jobs, threads, out, device, retries, data_root, cache_dir,
          overrides, backend, address, ray_timeout, dry_run, save_student, quiet):
    """Run a protocol's grid (methods x teachers x bit-widths x seeds), one directory per job; resumable."""
    from zsqbench.frontends.sweep import expand, run_sweep
    from zsqbench.spine.registry import get_registry
    name = get_registry().protocol_name(protocol)  # the jobs get `protocol` as given: a file's path, or a name
    out = Path(out or Path("sweeps") / name)
    if address and backend != "ray":
        raise UserError("--address names a Ray cluster: use it with --backend ray")
    if ray_timeout is not None and backend != "ray":
        raise UserError("--ray-timeout bounds connecting to a Ray cluster: use it with --backend ray")
    if backend == "ray":  # a bad timeout, an address where no Ray answers: one line before any work
        from zsqbench.frontends.sweep_ray import check_cluster
        check_cluster(address, ray_timeout)
    from zsqbench.spine.cache import cache_base
    from zsqbench.spine.safety import check_output_dir
    check_output_dir(out, "--out")
    check_output_dir(cache_base(cache_dir), "--cache-dir")
    if backend == "ray":  # every node must find the same files: no path relative to this shell
        from zsqbench.frontends.sweep_ray import absolute
        out, cache_dir, data_root = Path(absolute(out)), absolute(cache_dir), absolute(data_root)
    grid = expand(protocol, methods, models, bits, seeds, out, overrides=overrides)
    schedule = seed_schedule(name, grid, explicit_seeds=bool(seeds))
    if schedule:
        grid = schedule.initial()
    if dry_run:
        for job in grid:
            why = job.stale()
            console.print(f"{'done' if job.done() else 'todo'}  {escape(str(job.dir))}"
                          + (f"  ({escape(why)})" if why else ""), highlight=False, soft_wrap=True)
        return
    runner = None
    if backend == "ray":
        from zsqbench.frontends.sweep_ray import RayBackend
        from zsqbench.spine.registry import get_registry
        runner = RayBackend(get_registry().get("protocols", name), device, address, jobs, threads,
                            timeout=ray_timeout)
    summary = run_sweep(grid, protocol, jobs or 1, threads, device, cache_dir, data_root, retries, quiet, out,
                        backend=runner, more=schedule.after if schedule else None, save_student=save_student)
    minutes = summary["wall_s"] / 60
    console.print(f"sweep {name}: {summary['jobs']} jobs — {summary['ok']} ok, {summary['diverged']} diverged, "
                  f"{summary['skipped']} already done, {len(summary['failed'])} failed "
                  f"({summary['retried']} retries) in {minutes:.1f} min; records under {out}/*/{'record.json'}",
                  highlight=False, soft_wrap=True)
    if summary["failed"]:
        console.print("[red]failed[/] (see log.txt in each): " + ", ".join(summary["failed"]), soft_wrap=True)
        sys.exit(1)


def seed_schedule(protocol: str, grid: list, explicit_seeds: bool):
    """The protocol's seed rule over this grid (None without one, or when --seeds chose the seeds)."""
    from zsqbench.frontends.seed_rule import SeedRule, SeedSchedule
    from zsqbench.frontends.sweep import final_top1
    from zsqbench.spine.registry import get_registry
    rule = SeedRule.of(get_registry().get("protocols", protocol))
    if rule is None or explicit_seeds:
        return None
    return SeedSchedule(rule, grid, final_top1)


def _summary(rec: dict, path: Path) -> None:
    t = Table(title=escape(f"{rec['method']['name']} · {rec['model']}@{rec['dataset']} · W{rec['wbits']}A{rec['abits']}"
                           f" · seed {rec['seed']} · {rec['protocol']['name']} v{rec['protocol']['version']}"),
              show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(overflow="fold")  # the record's full path, never cut
    if rec["status"] == "diverged":
        d = rec["diverged"]
        t.add_row("status", f"[red]DIVERGED[/] ({d['what']} in {d['phase']} at step {d['step']})")
    t.add_row("final top-1", "—" if rec["final_top1"] is None else f"{rec['final_top1']:.2f} %  "
              f"({rec['eval_samples']} {rec['config']['eval'].get('split', 'test')} images)")
    t.add_row("FP top-1", f"{rec['fp_top1']:.2f} %")
    prep = rec["teacher"].get("preprocessing")
    if prep:
        t.add_row("teacher input", escape(f"mean {prep['mean']}, std {prep['std']}"
                                          + (f", {prep['fit']} to the network size" if prep.get("fit") else "")
                                          + f" ({prep['source']})"))
    if rec["best_top1_selected_on_test"] is not None and len(rec["eval_history"]) > 1:
        t.add_row("best on test (legacy)", f"{rec['best_top1_selected_on_test']:.2f} %  [dim](selected on the test "
                  "set, as the papers report)[/]")
    tm = rec["timing"]
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in tm["phases_s"].items())
    t.add_row("wall time", f"{tm['total_s']:.1f} s  ({phases})")
    if tm["mean_step_s"]:
        t.add_row("step time", f"{tm['mean_step_s'] * 1000:.1f} ms  ({tm['steps']} steps)")
    t.add_row("peak memory", f"{rec['memory']['peak_rss_mb']:.0f} MB RSS"
              + (f", {rec['memory']['peak_cuda_mb']:.0f} MB CUDA" if rec["memory"].get("peak_cuda_mb") else ""))
    if rec["off_protocol"]:
        t.add_row("off-protocol", "[yellow]" + escape("; ".join(rec["off_protocol"])) + "[/]")
    if rec.get("student"):
        from zsqbench.frontends.export_commands import summary_rows
        for k, v in summary_rows(rec, path):
            t.add_row(k, v)
    t.add_row("record", escape(str(Path(path).resolve())))
    console.print(t)


@cli.command()
@click.argument("target", type=click.Path())
@click.option("--rows", multiple=True, metavar="METHOD[/MODEL[/WxAy]]",
              help="Of a leaderboard: only these rows (repeatable; e.g. adadfq/resnet20/W3A3).")
@click.option("--seeds", multiple=True, type=int, help="Of a leaderboard: only these seeds (repeatable).")
@click.option("--sample", type=click.IntRange(1, None), default=1, show_default=True,
              help="Of a leaderboard: re-run this many of the selected runs, drawn with --sample-seed.")
@click.option("--all", "all_runs", is_flag=True, help="Of a leaderboard: every selected run (instead of --sample).")
@click.option("--sample-seed", type=int, default=0, show_default=True)
@click.option("--tolerance", type=click.FloatRange(0, 100), default=0.0, show_default=True,
              help="Largest |new - original| top-1 (points) that counts as agreeing (docs/reproduce.md).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="Override the original thread count (the result is then not expected to agree bit for bit).")
@click.option("--out", "-o", default="results/reproduce", show_default=True, type=click.Path(file_okay=False),
              help="Where the new records go.")
@click.option("--data-root", default=None, type=click.Path(), help="Where the evaluation data lives.")
@click.option("--cache-dir", default=None, type=click.Path(), help="pytorchcv weights / synthetic-set cache.")
@click.option("--dry-run", is_flag=True, help="Say what would be re-run and how; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def reproduce(target, rows, seeds, sample, all_runs, sample_seed, tolerance, threads, out, data_root, cache_dir,
              dry_run, as_json):
    """Re-run a run record, or sampled runs of a leaderboard, from their own provenance (method, settings, seed,
    teacher, protocol, thread count) and report per run the original and new top-1 and whether they agree within
    --tolerance; a mismatch names what differs (code, library versions, CPU, threads). Exit 1 if any differs."""
    import json as _json

    from zsqbench.frontends.reproduce import reproduce as do_reproduce
    from zsqbench.frontends.reproduce_report import table
    report = do_reproduce(target, rows, seeds, None if all_runs else sample, sample_seed, out, data_root, cache_dir,
                          tolerance, threads, dry_run)
    if as_json:
        click.echo(_json.dumps(report, indent=2))
    elif dry_run:
        for r in report["results"]:
            click.echo(f"{r['label']}: top-1 {r['original']['final_top1']}, {r['threads']} thread(s) "
                       f"({r['threads_from']})\n  {r['command']}")
    else:
        console.print(table(report))
    if any(r["verdict"] in ("differs", "failed") for r in report["results"]):
        sys.exit(1)


@cli.command("list")
@click.argument("what", required=False,
                type=click.Choice(["methods", "synthesizers", "distillers", "quantizers", "models", "datasets",
                                   "protocols", "plugins", "settings"]))
@click.argument("method", required=False)
@click.option("--refresh", is_flag=True, help="Load the plugins again instead of the cached listing.")
def list_(what, method, refresh):
    """Show registered methods, components, models, datasets, protocols and plugins, with their providers;
    `list settings METHOD`: every setting of a method with its type, default and value per protocol."""
    if what == "settings":
        if not method:
            raise UserError("give the method: zsqbench list settings METHOD (see `zsqbench list methods`)")
        from zsqbench.frontends.listing import settings_table
        from zsqbench.spine.registry import get_registry
        console.print(settings_table(get_registry(), method))
        return
    if method:
        raise UserError(f"`zsqbench list {what}` takes no name (only `zsqbench list settings METHOD` does)")
    from zsqbench.frontends import catalog
    listing = None if refresh else catalog.load()  # no plugin (and no torch) loaded when it is current
    if listing is None:
        from zsqbench.spine.registry import get_registry
        listing = catalog.from_registry(get_registry())  # a broken plugin warns here
        catalog.save(listing)
    else:
        for p in listing["plugins"]:  # the same warning from the cached listing
            if p["status"].startswith(("failed", "skipped")):
                err_console.print(escape(f"warning: plugin '{p['entry_point']}' ({p['distribution']} {p['version']}) "
                                         f"{p['status']} (cached listing; `zsqbench list --refresh` loads it again)"),
                                  highlight=False, soft_wrap=True)
    kinds = [what] if what else list(listing["kinds"]) + ["plugins"]
    for kind in kinds:
        if kind == "plugins":
            t = Table(title="plugins", title_justify="left")
            for c in ("entry point", "distribution", "version", "status"):
                t.add_column(c)
            for p in listing["plugins"]:
                t.add_row(*(escape(p[k]) for k in ("entry_point", "distribution", "version", "status")))
            console.print(t)
            continue
        t = Table(title=kind, title_justify="left")
        t.add_column("name", style="bold", no_wrap=True)
        t.add_column("provided by")
        t.add_column("grid; budget per run (a method may set its own: list settings METHOD); description"
                     if kind == "protocols" else "description")
        for row in listing["kinds"][kind]:  # plugin-supplied text: never markup
            desc = escape(row["text"])
            if row.get("dim"):
                desc += ("\n" if kind == "protocols" else " ") + f"[dim]{escape(row['dim'])}[/]"
            t.add_row(escape(row["name"]), escape(row["provider"]), desc)
        console.print(t)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def validate(paths):
    """Check run records, leaderboards, leaderboard notes and published baselines (detected by their content)
    against their JSON Schemas and rules; a directory is searched for *.json (files of none of these kinds are
    skipped there)."""
    from zsqbench.frontends.validate import find_files, unreadable, validate_file
    bad = checked = 0
    for path, explicit in find_files(paths):
        kind, errors = validate_file(path)
        if kind is None and not explicit and not unreadable(errors):
            continue  # a sweep's job.json, a cache entry, ...: not something validate knows (not JSON: invalid)
        checked += 1
        if errors:
            bad += 1
            console.print(f"[red]invalid[/] {escape(str(path))}" + (f" ({kind})" if kind else "") + ": "
                          + escape("; ".join(errors[:5])), highlight=False, soft_wrap=True)
        else:
            console.print(f"[green]valid[/] {escape(str(path))} ({kind})", highlight=False, soft_wrap=True)
    if not checked:
        raise UserError(f"no run record, leaderboard or published baselines file in {', '.join(paths)} "
                        "(nor leaderboard notes)")
    if bad:
        sys.exit(1)


from zsqbench.frontends.export_commands import register as _register_export  # noqa: E402
from zsqbench.frontends.leaderboard_commands import register as _register_leaderboard  # noqa: E402

_register_leaderboard(cli)
_register_export(cli)


def main():
    from zsqbench.frontends.lazy import plugins_may_add_commands
    if plugins_may_add_commands():  # else --help and the commands that need no plugin never import torch
        from zsqbench.spine.registry import get_plugin_manager
        try:
            get_plugin_manager().hook.zsqbench_register_commands(cli=cli)
        except UserError as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            sys.exit(2)
    cli()


if __name__ == "__main__":
    main()
