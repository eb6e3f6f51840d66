"""Method plug-ins: one module per method, registered on import (registry name = file name)."""

from methods import joint, naive  # noqa: F401
