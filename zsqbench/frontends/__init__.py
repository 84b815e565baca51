"""Front ends: the ways in to the spine, none of which changes a result.

The ``zsqbench`` command line (:mod:`~zsqbench.frontends.cli`, with :mod:`~zsqbench.frontends.lazy` keeping
``--help`` fast, and the command groups :mod:`~zsqbench.frontends.leaderboard_commands` and
:mod:`~zsqbench.frontends.export_commands`), the listings (:mod:`~zsqbench.frontends.listing`,
:mod:`~zsqbench.frontends.catalog`), ``zsqbench synth`` (:mod:`~zsqbench.frontends.synth`), ``zsqbench validate``
(:mod:`~zsqbench.frontends.validate`), the sweep drivers (:mod:`~zsqbench.frontends.sweep`,
:mod:`~zsqbench.frontends.sweep_ray`, :mod:`~zsqbench.frontends.seed_rule`), ``zsqbench reproduce``
(:mod:`~zsqbench.frontends.reproduce`, :mod:`~zsqbench.frontends.reproduce_report`) and the teacher-training script
(:mod:`~zsqbench.frontends.train_teacher`). ``zsqbench.testing`` (a plugin's test kit) is a front end too, kept at the
top as a public namespace beside ``zsqbench.api``.

Front ends import the spine and the stages; neither imports a front end, so a run's code fingerprint
(:mod:`zsqbench.spine.provenance`) never includes one and editing a front end re-runs nothing.
"""
