"""Leaderboards and comparisons built from run records (issue #5).

``collect`` finds and loads records (files, or directories searched recursively), ``build`` aggregates them per
(model@dataset, bits, method) into a schema-validated leaderboard, ``compare`` tests differences across seeds,
``show`` renders both, and ``commands`` holds the click commands (``register(cli)`` adds them to ``zsqbench``).
"""
