"""Hook specifications. A plugin module implements any of these with ``@zsqbench.hookimpl``."""
import pluggy

NAME = "zsqbench"
hookspec = pluggy.HookspecMarker(NAME)
hookimpl = pluggy.HookimplMarker(NAME)


@hookspec
def zsqbench_register(registry):
    """Add components to ``registry`` (a :class:`zsqbench.spine.registry.Registry`):
    ``registry.add_method(...)``, ``add_synthesizer``, ``add_distiller``, ``add_quantizer``, ``add_model``,
    ``add_dataset``, ``add_protocol``."""


@hookspec
def zsqbench_register_commands(cli):
    """Add click commands to the ``zsqbench`` command group."""
