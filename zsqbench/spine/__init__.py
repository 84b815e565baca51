"""The spine: what every run goes through, whatever the method.

* the run itself — :mod:`~zsqbench.spine.plan` (one frozen, typed run plan from the CLI's or a sweep's request) and
  :mod:`~zsqbench.spine.loop` (the one training loop that executes a plan);
* what components agree on — :mod:`~zsqbench.spine.interfaces` (the component interfaces, ``RunContext``,
  ``Batch``, ``Method``), :mod:`~zsqbench.spine.settings` (typed settings), :mod:`~zsqbench.spine.registry` and
  :mod:`~zsqbench.spine.hookspecs` (plugins), :mod:`~zsqbench.spine.errors`;
* plumbing the loop uses — :mod:`~zsqbench.spine.provenance` (code fingerprints), :mod:`~zsqbench.spine.numerics`
  (seeds, threads, devices), :mod:`~zsqbench.spine.cache`, :mod:`~zsqbench.spine.safety` (output checks),
  :mod:`~zsqbench.spine.progress`.

The stages (``teacher``, ``quantizer``, ``synthesizer``, ``distiller``, ``evaluation``, ``record``, ``export``,
``leaderboard``) may import the shared parts of the spine but never the plan or the loop, which drive them; nothing
here imports a front end (:mod:`zsqbench.frontends`). ``tests/test_layout.py`` checks both.
"""
