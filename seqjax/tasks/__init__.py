"""Built-in tasks: data generators with their loss and the baseline a model must beat."""

from seqjax.tasks import adding, copy, sunspots

__all__ = ["adding", "copy", "sunspots"]
