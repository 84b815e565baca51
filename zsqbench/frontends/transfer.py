"""A leaderboard's ``transfer`` block (issue #25 part 5): the tables of the teachers a protocol holds out from
choosing settings, beside those of the teachers the settings were chosen on. A front end: it reads the registered
protocol's ``transfer`` and the methods' roles, which the leaderboard stage does not look up."""
from __future__ import annotations

from zsqbench.leaderboard.build import transfer_block
from zsqbench.spine.errors import UserError
from zsqbench.spine.registry import get_registry


def with_transfer(lb: dict) -> dict:
    """The leaderboard with its ``transfer`` block: from the registered protocol's ``transfer`` and the methods'
    roles when the leaderboard's protocol is the registered one of the same hash; else recomputed from the block it
    already has (a leaderboard restated where its protocol is not installed); else none. No block either when no
    held-out teacher has a table beside its chosen-on teacher's."""
    old = lb.pop("transfer", None)
    reg = get_registry()
    try:
        proto = reg.get("protocols", lb["protocol"]["name"])
    except UserError:
        proto = None
    if proto is not None and proto.get("hash") == lb["protocol"]["hash"]:
        if not proto.get("transfer"):
            return lb
        pairs, roles = proto["transfer"], method_roles(reg, {r["method"] for r in lb["rows"]})
    elif old:
        pairs, roles = old["pairs"], old["roles"]
    else:
        return lb
    block = transfer_block(lb["rows"], pairs, roles)
    if block is not None:
        lb["transfer"] = block
    return lb


def method_roles(reg, methods: set[str]) -> dict[str, str]:
    """The role (floor, ceiling) of each of these methods that has one; a method not installed here has none."""
    roles = {}
    for name in sorted(methods):
        try:
            role = reg.get("methods", name).role
        except UserError:
            continue
        if role:
            roles[name] = role
    return roles
