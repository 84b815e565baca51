"""A leaderboard's ``sizes`` block: each table's FP and packed student sizes, computed by
:mod:`zsqbench.export.sizes` for the run plan of each row (a front end: it resolves plans, which no stage does)."""
from __future__ import annotations

import json

from zsqbench.export.sizes import HOW, SOURCE, plan_sizes
from zsqbench.leaderboard.build import table_name, table_rows
from zsqbench.spine.errors import UserError
from zsqbench.spine.plan import RunSpec, resolve
from zsqbench.spine.registry import get_registry


def leaderboard_sizes(lb: dict) -> dict | None:
    """The leaderboard's ``sizes`` block, or None when its protocol is not the registered one of the same hash
    (the sizes would be another protocol's) or when no table can be sized. A method the registry cannot resolve
    for a table is listed in the table's ``unsized``."""
    reg = get_registry()
    proto = lb["protocol"]
    try:
        current = reg.get("protocols", proto["name"])
    except UserError:
        return None
    if current.get("hash") != proto["hash"]:
        return None
    tables = []
    for (model, dataset, w, a), rows in table_rows(lb["rows"]).items():
        groups: dict[str, dict] = {}
        fp = None
        unsized = []
        for row in rows:
            try:
                plan = resolve(RunSpec(method=row["method"], model=f"{model}@{dataset}", wbits=w, abits=a,
                                       protocol=proto["name"]), reg)
                s = plan_sizes(plan)
            except (UserError, ImportError, TypeError, ValueError, RuntimeError):  # e.g. a plugin not installed here
                unsized.append(row["method"])
                continue
            fp = s["fp_state_dict_bytes"]
            entry = {k: v for k, v in s.items() if k != "fp_state_dict_bytes"}
            key = json.dumps(entry, sort_keys=True)
            groups.setdefault(key, {"methods": [], **entry})["methods"].append(row["method"])
        if fp is None:
            continue
        students = sorted(groups.values(), key=lambda g: (not g["integer"], g["methods"]))
        for g in students:
            g["methods"].sort()
        tables.append({"table": table_name(rows[0]), "fp_state_dict_bytes": fp, "students": students,
                       "unsized": sorted(unsized)})
    if not tables:
        return None
    return {"source": SOURCE, "how": HOW, "tables": tables}


def with_sizes(lb: dict) -> dict:
    """The leaderboard with its ``sizes`` block, or without one where they cannot be computed here."""
    lb.pop("sizes", None)
    sizes = leaderboard_sizes(lb)
    if sizes is not None:
        lb["sizes"] = sizes
    return lb
