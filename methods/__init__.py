"""Method plug-ins: one module per method, registered on import (registry name = file name)."""

from methods import ewc, joint, lwf, naive, replay  # noqa: F401
