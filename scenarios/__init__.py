"""Scenario plug-ins: one module per scenario family, registered on import."""

from scenarios import (  # noqa: F401
    avalanche_adapter,
    core50,
    corruption_c,
    digits,
    mnist,
    mnist_c,
    mnist_ft,
    split_cifar,
    split_cub200,
    split_imagenet,
    text,
    text_domains,
)
