"""Built-in tasks: data generators with their loss and the baseline a model must beat.

``mnist1d`` and ``digits`` need the ``seqjax[tasks]`` extra when their data is first asked for."""

from seqjax.tasks import adding, charlm, copy, digits, mnist1d, registry, sunspots

__all__ = ["adding", "charlm", "copy", "digits", "mnist1d", "registry", "sunspots"]
