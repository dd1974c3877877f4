"""Typed settings at the boundary: one dataclass per config group, checked when a command composes.

``imaging.apps`` calls :func:`check_command` on the composed config before any work, so a bad
value (a type, a range, a choice) exits 2 naming its dotted key; lower layers may take the
dataclasses (:func:`build`) instead of a ``DictConfig``. One module per group: ``train``
(trainer, data), ``inference``, ``deid``, ``ingest``, ``launcher``, ``federation``,
``dicomweb``, ``tracking``; ``commands`` says which command composes which.
This package imports nothing of ``imaging`` but :mod:`imaging.errors`: every layer may use it.
"""

from imaging.settings.check import SettingsError, build, check_node
from imaging.settings.commands import COMMANDS, check_command

__all__ = ["COMMANDS", "SettingsError", "build", "check_command", "check_node"]
