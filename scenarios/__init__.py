"""Scenario plug-ins: one module per scenario family, registered on import."""

from scenarios import avalanche_adapter, digits, mnist, mnist_ft, text, text_domains  # noqa: F401
from scenarios import corruption_c, mnist_c  # noqa: F401  (test-time streams)
