"""Method plug-ins: one module per method, registered on import (registry name = file name)."""

from methods import (  # noqa: F401
    classp,
    cotta,
    dynamic_rank_lora,
    ewc,
    hft,
    joint,
    lae,
    lwf,
    migu,
    naive,
    norm_adapt,
    psmt,
    replay,
    source_only,
    ssu,
    tent,
)
