"""Method plug-ins: one module per method, registered on import (registry name = file name)."""

from methods import classp, dynamic_rank_lora, ewc, hft, joint, lae, lwf, migu, naive, replay, ssu  # noqa: F401
from methods import cotta, norm_adapt, psmt, source_only, tent  # noqa: F401  (test-time adaptation)
