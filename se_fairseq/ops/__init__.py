"""The selection operator: which positions of a batch to mask."""

from .select import SELECT_MODES, extension_available, select  # noqa: F401
