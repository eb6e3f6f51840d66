"""Method plug-ins: one module per method, registered on import (registry name = file name)."""

from methods import classp, ewc, hft, joint, lwf, migu, naive, replay, ssu  # noqa: F401
