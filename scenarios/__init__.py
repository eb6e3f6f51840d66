"""Scenario plug-ins: one module per scenario family, registered on import."""

from scenarios import (  # noqa: F401
    avalanche_adapter,
    corruption_c,
    digits,
    mnist,
    mnist_c,
    mnist_ft,
    text,
    text_domains,
)
