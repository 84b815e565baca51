"""zsqbench's own method plugins (import name ``zsqbench_plugins``), loaded through the ``zsqbench`` entry-point
group exactly like third-party plugins."""
