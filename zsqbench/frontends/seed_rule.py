"""How many seeds a leaderboard row gets: a rule the protocol states before any result is seen.

A protocol may carry ``seed_rule``::

    "seeds": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    "seed_rule": {"first": 3, "cap": 10, "ci_half_width": 2.0,
                  "ci_half_width_by_table": {"resnet20@fmnist W4A4": 0.5},
                  "cap_by_table": {"resnet20-b@fmnist W3A3": 3}}

Every row (method, teacher, bit-width) starts with the protocol's first ``first`` seeds. Each time all its started
seeds have ended, the row's own finished final top-1 values decide: while the Student-t 95 % CI half-width of their
mean is above the table's target (or undefined: under two finished seeds) and fewer than ``cap`` seeds have run,
the next seed of the protocol's list runs (``cap_by_table``: a lower cap for a table that answers another question,
e.g. a transfer table read against the floor, not ranked in tiers; a cap under ``first`` is the table's whole seed
count). Nothing else enters the decision — not other rows, not the mean — so a
row's seed count says how noisy the row is, never how it compares. ``zsqbench sweep`` applies the rule and resumes
it from the records on disk; ``--seeds`` (an explicit choice) turns it off.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from zsqbench.leaderboard.stats import ci_half_width
from zsqbench.spine.errors import UserError


@dataclass(frozen=True)
class SeedRule:
    first: int
    cap: int
    ci_half_width: float
    by_table: dict = field(default_factory=dict)
    cap_by_table: dict = field(default_factory=dict)

    @classmethod
    def of(cls, protocol: dict) -> "SeedRule | None":
        """The protocol's rule, checked (UserError, one line); None when it has none."""
        rule = protocol.get("seed_rule")
        if rule is None:
            return None
        where = f"protocol {protocol['name']!r} seed_rule"
        if not isinstance(rule, dict) or set(rule) - {"first", "cap", "ci_half_width", "ci_half_width_by_table",
                                                     "cap_by_table"}:
            raise UserError(f"{where}: expected an object with first, cap, ci_half_width and optionally "
                            "ci_half_width_by_table and cap_by_table")
        first, cap, target = rule.get("first"), rule.get("cap"), rule.get("ci_half_width")
        by_table = rule.get("ci_half_width_by_table", {})
        ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (first, cap))
        if not ints or not 1 <= first <= cap:
            raise UserError(f"{where}: first and cap must be integers with 1 <= first <= cap (got {first}, {cap})")
        if cap > len(protocol["seeds"]):
            raise UserError(f"{where}: cap {cap} is more than the {len(protocol['seeds'])} seeds the protocol lists")
        targets = [target, *by_table.values()] if isinstance(by_table, dict) else [None]
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 for t in targets):
            raise UserError(f"{where}: CI half-width targets must be numbers > 0")
        caps = rule.get("cap_by_table", {})
        if not isinstance(caps, dict) or not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= cap
                                                 for c in caps.values()):
            raise UserError(f"{where}: cap_by_table must map tables to integers from 1 to cap ({cap})")
        return cls(first, cap, float(target), dict(by_table), dict(caps))

    def target(self, table: str) -> float:
        return float(self.by_table.get(table, self.ci_half_width))

    def cap_of(self, table: str) -> int:
        return self.cap_by_table.get(table, self.cap)

    def first_of(self, table: str) -> int:
        """The seeds every row of the table starts with: ``first``, or the table's cap where that is lower."""
        return min(self.first, self.cap_of(table))

    def wants_more(self, finals: list[float | None], table: str) -> bool:
        """Whether a row that has run ``len(finals)`` seeds (None: a seed that diverged) gets another one."""
        if len(finals) >= self.cap_of(table):
            return False
        if len(finals) < self.first_of(table):
            return True
        half = ci_half_width([v for v in finals if v is not None])
        return half is None or half > self.target(table)


def table_of(job) -> str:
    return f"{job.model} W{job.wbits}A{job.abits}"


class SeedSchedule:
    """The rule applied to a sweep: which of the protocol's seed jobs run now, and which follow as rows end.

    ``jobs`` is the sweep's full grid over every seed the protocol lists (in the protocol's seed order within each
    row); ``final(job)`` reads a finished job's final top-1 (None when it diverged or has no record)."""

    def __init__(self, rule: SeedRule, jobs: list, final):
        self.rule = rule
        self.final = final
        self.rows: dict[tuple, list] = defaultdict(list)
        for job in jobs:
            self.rows[(job.method, job.model, job.wbits, job.abits)].append(job)
        self.started: dict[tuple, int] = {}
        self.pending: dict[tuple, int] = {}

    def initial(self) -> list:
        """Every row's first seeds and, for a row that already has records (a resumed sweep), the seeds the rule
        asks for after them; jobs that are done are included (the sweep counts them as skipped)."""
        out = []
        for key, jobs in self.rows.items():
            self.started[key] = min(self.rule.first_of(table_of(jobs[0])), len(jobs))
            self.pending[key] = sum(not j.done() for j in jobs[:self.started[key]])
            out += jobs[:self.started[key]]
            if self.pending[key] == 0:
                out += self._next(key)
        return out

    def after(self, job) -> list:
        """Called when one of a row's jobs has ended (finished, diverged, or failed for good): the row's next seed
        job once every started seed of the row has ended and the rule wants more; else nothing."""
        key = (job.method, job.model, job.wbits, job.abits)
        self.pending[key] -= 1
        return self._next(key) if self.pending[key] == 0 else []

    def _next(self, key) -> list:
        """Seeds past the started ones while the rule wants more: those already done are taken as they are, the
        first one that is not is returned to run."""
        jobs = self.rows[key]
        while self.started[key] < len(jobs) and self._more(key, self.started[key]):
            job = jobs[self.started[key]]
            self.started[key] += 1
            if not job.done():
                self.pending[key] = 1
                return [job]
        return []

    def _more(self, key, n: int) -> bool:
        jobs = self.rows[key]
        return self.rule.wants_more([self.final(j) for j in jobs[:n]], table_of(jobs[0]))
