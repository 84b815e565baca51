"""Where does an image-set method's seed spread come from: the synthetic set, or the fine-tuning? A diagnostic for
leaderboard rows whose seeds land far apart (issue #6's power target).

A run's seed fixes two things in an image-set method (hast, intraq, zeroq-kd, synq): the images it synthesizes
before training, and everything random afterwards (calibration, batch order, crops, the fine-tuning). This script
crosses them: the set is built with ``--set-seeds`` and the run is seeded with ``--train-seeds``, every pair, so a
set-seed x train-seed table shows which of the two moves the result. On the diagonal (set seed = train seed) the run
is exactly the method's own run at that seed. Each run is the `cpu` protocol's, scored on the *dev* split (the last
10 000 train images), so its records are off-protocol and never enter a leaderboard.

    python benchmarks/seed_split.py --method intraq [--model resnet20@fmnist] [--bits 3]
                                    [--set-seeds 0,1,2] [--train-seeds 0,1,2] [--out sweeps/seed-split]
                                    [--cache-dir DIR]

It prints the table, each factor's share of the spread (a two-way ANOVA without interaction, scipy's F test) and
writes ``OUT/<method>-<model>-wBaB.json``. Finished runs are read back, so a killed run resumes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import Field

SUFFIX = "+set-seed"


def pinned_synthesizer(cls):
    """``cls`` with one more setting, ``set_seed``: the seed its image set is synthesized (and cached) with, in
    place of the run's. Everything after synthesis keeps the run's seed."""

    class SetSeedSynthesizer(cls):
        name = cls.name + SUFFIX
        description = f"{cls.name}'s synthesizer with the set built from its own seed (diagnostic)"

        class Settings(cls.Settings):
            set_seed: int = Field(0, ge=0, description="seed of the synthetic set (the run's seed does the rest)")

        USE_KEYS = tuple(cls.USE_KEYS) + ("set_seed",)  # the key's "seed" below carries it

        def cache_key_fields(self, ctx):
            return {**super().cache_key_fields(ctx), "seed": self.config["set_seed"]}

        def synthesize(self, ctx):
            run_seed, ctx.seed = ctx.seed, self.config["set_seed"]
            try:
                return super().synthesize(ctx)
            finally:
                ctx.seed = run_seed

    SetSeedSynthesizer.__qualname__ = f"SetSeed[{cls.__qualname__}]"
    return SetSeedSynthesizer


def register(method: str, dataset: str, protocol: str) -> str:
    """Register ``method + '+set-seed'`` (same distiller, quantizer and ``protocol`` settings) under this script's
    own provider; returns its name."""
    from zsqbench.spine.errors import UserError
    from zsqbench.spine.interfaces import Method
    from zsqbench.spine.registry import get_registry
    from zsqbench.synthesizer.imageopt import ImageSetSynthesizer
    registry = get_registry()
    name = method + SUFFIX
    if name in registry.methods:
        return name
    base = registry.get("methods", method)
    synth = registry.get("synthesizers", base.synthesizer)
    if not issubclass(synth, ImageSetSynthesizer):
        raise UserError(f"{method} does not synthesize an image set before training (its synthesizer is "
                        f"{base.synthesizer!r}); seed_split.py takes hast, intraq, zeroq-kd, synq, ...")
    stage = registry.staging("benchmarks/seed_split.py", "zsqbench-benchmarks")
    stage.add_synthesizer(pinned_synthesizer(synth))
    stage.add_method(Method(name, synthesizer=synth.name + SUFFIX, distiller=base.distiller,
                            quantizer=base.quantizer, settings={protocol: base.settings_for(protocol, dataset)},
                            description=f"{method} with the synthetic set's seed set apart (diagnostic)"))
    registry.commit(stage)
    return name


def anova(table: list[list[float]]) -> dict:
    """Two-way ANOVA without interaction (one run per cell): rows = set seeds, columns = train seeds."""
    import numpy as np
    from scipy import stats
    y = np.asarray(table, dtype=float)
    r, c = y.shape
    grand = y.mean()
    ss_rows = c * ((y.mean(1) - grand) ** 2).sum()
    ss_cols = r * ((y.mean(0) - grand) ** 2).sum()
    ss_total = ((y - grand) ** 2).sum()
    ss_err = ss_total - ss_rows - ss_cols
    df_rows, df_cols, df_err = r - 1, c - 1, (r - 1) * (c - 1)
    out = {"ss_total": float(ss_total)}
    for key, ss, df in (("set", ss_rows, df_rows), ("train", ss_cols, df_cols)):
        f = (ss / df) / (ss_err / df_err) if ss_err > 0 and df_err else float("inf")
        out[key] = {"share": float(ss / ss_total) if ss_total else 0.0, "F": float(f),
                    "p": float(stats.f.sf(f, df, df_err)) if df_err else None,
                    "means": [round(float(v), 2) for v in (y.mean(1) if key == "set" else y.mean(0))]}
    out["residual_share"] = float(ss_err / ss_total) if ss_total else 0.0
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--model", default="resnet20@fmnist")
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--set-seeds", default="0,1,2")
    parser.add_argument("--train-seeds", default="0,1,2")
    parser.add_argument("--protocol", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra overrides (tests: tiny budgets)")
    parser.add_argument("--out", default="sweeps/seed-split")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache/zsqbench"))
    args = parser.parse_args(argv)
    from zsqbench.spine.errors import UserError
    from zsqbench.testing import run_method
    try:
        name = register(args.method, args.model.split("@")[-1], args.protocol)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    set_seeds = [int(s) for s in args.set_seeds.split(",")]
    train_seeds = [int(s) for s in args.train_seeds.split(",")]
    tag = f"{args.method}-{args.model.replace('@', '-')}-w{args.bits}a{args.bits}"
    table, runs = [], []
    for s in set_seeds:
        row = []
        for t in train_seeds:
            out = Path(args.out) / f"{tag}-set{s}-train{t}"
            done = sorted(out.glob("*.json"))
            record = (json.loads(done[0].read_text()) if done else
                      run_method(name, out_dir=out, protocol=args.protocol, model=args.model, bits=args.bits,
                                 seed=t, overrides={"eval.split": "dev", "synthesizer.set_seed": s, **extra},
                                 cache_dir=args.cache_dir))
            top1 = record["final_top1"] if record["status"] == "ok" else float("nan")
            bns = record["diagnostics"].get("data", {}).get("synthetic", {}).get("bns_error")
            runs.append({"set_seed": s, "train_seed": t, "dev_top1": top1, "set_bns_error": bns,
                         "wall_s": record["timing"]["total_s"], "commit": record["git"]["commit"]})
            print(f"set seed {s}  train seed {t}  dev top-1 {top1:6.2f}  set BNS {bns}  "
                  f"({record['timing']['total_s']:.0f} s)", flush=True)
            row.append(top1)
        table.append(row)
    result = {"method": args.method, "model": args.model, "bits": f"W{args.bits}A{args.bits}",
              "protocol": args.protocol, "split": "dev", "overrides": extra, "runs": runs}
    if len(set_seeds) > 1 and len(train_seeds) > 1:
        result["anova"] = anova(table)
        a = result["anova"]
        print(f"set seed: {a['set']['share']:.0%} of the spread (F {a['set']['F']:.2f}, p {a['set']['p']:.3g}, "
              f"means {a['set']['means']}); train seed: {a['train']['share']:.0%} (F {a['train']['F']:.2f}, "
              f"p {a['train']['p']:.3g}, means {a['train']['means']}); residual {a['residual_share']:.0%}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{tag}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
