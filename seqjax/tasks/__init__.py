"""Built-in tasks: data generators with their loss and the baseline a model must beat."""

from seqjax.tasks import adding, copy

__all__ = ["adding", "copy"]
