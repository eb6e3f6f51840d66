"""Text CL benchmark loaders as plain Python data: LFPT5, O-LoRA CL_Benchmark, TRACE, hub.

These modules own reading the language-model CL benchmarks from disk into ``TextTask`` records
(text + label strings per split); tokenizing and building clbench Streams happen elsewhere. One
module per source: ``scenarios.text_lfpt5`` (LFPT5, Standard CL), ``scenarios.text_olora`` (O-LoRA
CL_Benchmark, Long Sequence, probe tasks), ``scenarios.text_trace`` (TRACE),
``scenarios.text_hub`` (Hugging Face hub); records, checksums and the validation carve are in
``scenarios._common``. This module is their public face (every name importable from here) and
this docstring their data reference.

Provenance (see each data folder's README.md; files are read in place and never copied):
- LFPT5 few-shot text classification (Qin & Joty, ICLR 2022), github.com/qcwthu/
  Lifelong-Fewshot-Language-Learning @ cf7d17c, ``Classification/textclassificationdata/
  <task>_csv/<seed>/{train,valid,test}.txt``, TSV ``text<TAB>label``; 16 examples per class in
  train and valid, 100 in test; seed folders ``0_42``, ``1_142``, ``2_242``. Label strings are
  kept as shipped, including dbpedia's ``thlete`` (sic, "athlete") and yahoo's
  ``entertainment and Music``.
- O-LoRA ``CL_Benchmark`` (Wang et al., EMNLP 2023 Findings), github.com/cmnfriend/O-LoRA @ 07117e1,
  ``CL_Benchmark/<family>/<task>/{train,dev,test}.json`` (arrays of ``{"sentence","label"}``) +
  ``labels.json`` + ``configs/instruction_config.json``. ``dev.json`` is byte-identical to
  ``test.json`` there, so it is never read: validation is carved from train
  (``carve_validation``). Quirk kept as shipped: MNLI test holds 131 examples labelled ``"-"``
  (not in ``labels.json``), counted in ``provenance["off_label"]``.
- TRACE (Wang et al., arXiv 2310.06762), github.com/BeyonderXX/TRACE @ 4fc6233,
  ``LLM-CL_Benchmark/<Task>/{train,eval,test}.json`` (arrays of ``{"prompt","answer"}``);
  ``TextExample.text`` is the prompt, ``label`` the answer.
- ``from_hub``: any Hugging Face dataset with a text and a label column, through ``datasets``.

Every file read is checked against the ``SHA256SUMS`` of its dataset folder when one is present
(``<hash>  ./relative/path`` lines); a mismatch raises ``DataUnavailableError``.
Task orders (``STANDARD_ORDERS``, ``LONG_ORDERS``) follow O-LoRA ``scripts/order_{1,2,3}.sh`` and
MIGU ``scripts/full_tuning/order_{4,5,6}.sh`` (specs/protocol.md section 2).

VERSION history: 1 = initial (LFPT5, O-LoRA, TRACE layouts; hash-ranked stratified validation).
"""

from __future__ import annotations

from clbench.errors import ConfigError
from scenarios._common import (  # noqa: F401 - re-exported
    PathLike,
    TextExample,
    TextTask,
    carve_validation,
    label_counts,
)
from scenarios.text_hub import from_hub  # noqa: F401 - re-exported
from scenarios.text_lfpt5 import (  # noqa: F401 - re-exported
    LFPT5_INSTRUCTIONS,
    LFPT5_REPO,
    LFPT5_TASKS,
    STANDARD_ORDERS,
    load_lfpt5,
    load_standard_cl,
)
from scenarios.text_olora import (  # noqa: F401 - re-exported
    LONG_ORDERS,
    OLORA_REPO,
    OLORA_TASKS,
    load_long_sequence,
    load_olora,
    load_probe_task,
    olora_prompt,
)
from scenarios.text_trace import TRACE_REPO, TRACE_TASKS, ValFrom, load_trace  # noqa: F401 - re-exported

VERSION = "1"


def order_tasks(order: int) -> list[str]:
    """Task names of a Standard (1-3) or Long Sequence (4-6) order, first task first."""
    orders = {**STANDARD_ORDERS, **LONG_ORDERS}
    if order not in orders:
        raise ConfigError("scenario.order", order, sorted(orders))
    return list(orders[order])

