"""A leaderboard's ``transfer`` block (issue #25 part 5): the tables of the teachers a protocol holds out from
choosing settings, beside those of the teachers the settings were chosen on. A front end: it reads the registered
protocol's ``transfer`` and the methods' roles, which the leaderboard stage does not look up."""
from __future__ import annotations

from zsqbench.leaderboard.build import transfer_block
from zsqbench.spine.errors import UserError
from zsqbench.spine.registry import get_registry


def with_transfer(lb: dict) -> dict:
    """The leaderboard with its ``transfer`` block, or without one when its protocol is not the registered one of
    the same hash, declares no ``transfer``, or no held-out teacher has a table beside its chosen-on teacher's."""
    lb.pop("transfer", None)
    reg = get_registry()
    try:
        proto = reg.get("protocols", lb["protocol"]["name"])
    except UserError:
        return lb
    if proto.get("hash") != lb["protocol"]["hash"] or not proto.get("transfer"):
        return lb
    methods = {r["method"] for r in lb["rows"]}
    roles = {}
    for name in sorted(methods):
        try:
            role = reg.get("methods", name).role
        except UserError:  # a plugin not installed here: its row is read as a method
            continue
        if role:
            roles[name] = role
    block = transfer_block(lb["rows"], proto["transfer"], roles)
    if block is not None:
        lb["transfer"] = block
    return lb
