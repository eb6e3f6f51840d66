"""Continual domain adaptation of a causal LM on unlabeled text that every install carries offline.

The SSU setting (continued pre-training on new-domain text while protecting what the model
knows): a **source** text (CPython's documentation, ``pydoc_data.topics``) provides calibration
data and the general-capability probe, and each experience is one target domain of unlabeled
text, trained with the next-token loss:

1. ``sklearn_datasets``: scikit-learn's dataset descriptions (``sklearn/datasets/descr/*.rst``);
2. ``stdlib_docstrings``: docstrings of a fixed list of standard-library modules and their public
   functions and classes;
3. ``numpy_docstrings``: docstrings of NumPy's public functions (``numpy``, ``numpy.linalg``,
   ``numpy.fft``, ``numpy.random``).

Texts are tokenized with ``scenario.tokenizer`` and cut into blocks of ``max_length`` tokens
(identical blocks kept once, so no test block is also a training block), split 80/10/10 into train/val/test (seeded). R holds next-token accuracy on each domain's test
blocks; ``per_experience[i].test_perplexity`` is the target perplexity (plasticity). The content
depends on the pinned Python, NumPy and scikit-learn versions and is hashed into the results.

VERSION history: 1 = initial.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from clbench.hf import SMOLLM2_ID
from clbench.objectives import LanguageModelingObjective
from clbench.protocol import Scenario
from clbench.registry import register_scenario
from clbench.streams import Experience, SourceData, Split, Stream
from scenarios._common import DATA_SEED

VERSION = "1"
STDLIB = ("collections", "itertools", "functools", "json", "re", "pathlib", "typing", "argparse",
          "logging", "unittest", "asyncio", "subprocess", "email", "http.client", "socket",
          "threading", "csv", "datetime", "decimal", "fractions", "heapq", "shutil", "string")
NUMPY = ("numpy", "numpy.linalg", "numpy.fft", "numpy.random")


def pydoc_text() -> str:
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def sklearn_text() -> str:
    import sklearn

    folder = Path(sklearn.__file__).parent / "datasets" / "descr"
    return "\n\n".join(p.read_text() for p in sorted(folder.glob("*.rst")))


def _docstrings(modules: tuple[str, ...]) -> str:
    parts = []
    for name in modules:
        mod = importlib.import_module(name)
        parts.append(inspect.getdoc(mod) or "")
        for attr in sorted(getattr(mod, "__all__", None) or [a for a in dir(mod) if not a.startswith("_")]):
            obj = getattr(mod, attr, None)
            if (inspect.isfunction(obj) or inspect.isclass(obj) or callable(obj)) and inspect.getdoc(obj):
                parts.append(inspect.getdoc(obj) or "")
    return "\n\n".join(dict.fromkeys(p for p in parts if p))  # de-duplicated, order kept


DOMAINS: dict[str, Callable[[], str]] = {
    "sklearn_datasets": sklearn_text,
    "stdlib_docstrings": lambda: _docstrings(STDLIB),
    "numpy_docstrings": lambda: _docstrings(NUMPY),
}


@dataclass(frozen=True)
class TextDomainsConfig:
    domains: tuple[str, ...] = tuple(DOMAINS)  # target domains in stream order, one experience each
    tokenizer: str = SMOLLM2_ID  # hub id; must be the model's tokenizer
    max_length: int = 64  # tokens per block (texts are cut into blocks of this length)
    max_blocks: int = 240  # per domain (and for the source), a seeded random subset; 0 = all


def blocks(text: str, tokenizer_id: str, length: int, cap: int, seed: int) -> Split:
    """Packed (N, 2, length) [ids, real-token mask] blocks of ``text`` (seeded subset of ``cap``)."""
    from clbench.text_models import load_tokenizer

    tok = load_tokenizer(tokenizer_id)
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    n = len(ids) // length
    chunks = torch.unique(ids[: n * length].reshape(n, length), dim=0)  # repeated passages once
    n = len(chunks)
    if cap and cap < n:
        chunks = chunks[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:cap]]
    x = torch.stack([chunks, torch.ones_like(chunks)], dim=1)
    return Split(x, torch.zeros(len(x), dtype=torch.long))


def three_way(s: Split, seed: int) -> tuple[Split, Split, Split]:
    """80/10/10 train/val/test split of blocks (seeded)."""
    order = torch.randperm(len(s), generator=torch.Generator().manual_seed(seed))
    a, b = int(0.8 * len(s)), int(0.9 * len(s))
    return s.subset(order[:a]), s.subset(order[a:b]), s.subset(order[b:])


@register_scenario("text_domains")
class TextDomains(Scenario):
    """Continual domain adaptation (unlabeled text, next-token loss) from Python docs to 3 new domains."""

    Config = TextDomainsConfig
    VERSION = VERSION
    default_model = "hf_causal_lm"

    def build(self) -> Stream:
        c: TextDomainsConfig = self.config
        for d in c.domains:
            if d not in DOMAINS:
                from clbench.errors import ConfigError

                raise ConfigError("scenario.domains", d, sorted(DOMAINS))
        src = three_way(blocks(pydoc_text(), c.tokenizer, c.max_length, c.max_blocks, DATA_SEED), DATA_SEED)
        exps = []
        for i, d in enumerate(c.domains):
            parts = three_way(blocks(DOMAINS[d](), c.tokenizer, c.max_length, c.max_blocks, DATA_SEED + i + 1),
                              DATA_SEED + i + 1)
            exps.append(Experience(i, 0, (0,), *parts))
        objective = LanguageModelingObjective()
        meta = {"tokenizer": c.tokenizer, "objective": objective.name, "domains": list(c.domains)}
        return Stream("text_domains", VERSION, "domain_incremental", tuple(exps), 1,
                      self.__doc__ or "", source=SourceData("python_docs", *src), meta=meta,
                      objective=objective)
