"""Owns the text-generation metrics of open-ended tasks: TRACE's per-task metrics, per example.

TRACE (Wang et al., arXiv 2310.06762; code github.com/BeyonderXX/TRACE at the commit
``scenarios/text_trace.py`` pins, ``metrics.py`` and ``evaluations/eval_<task>.py``) scores a
task as the mean over its test examples. Each function here returns one example's share of that
mean on the scale TRACE reports, so the mean of ``fn(generation, answer, prompt)`` over a task is
TRACE's figure for it:

- ``accuracy`` (0 or 1): exact match after stripping surrounding whitespace. TRACE's
  ``caculate_accuracy`` compares unstripped strings and scores an empty side 0; the two differ
  only there.
- ``rouge_l`` (0-1): the ``rouge`` package's (PyPI ``rouge``, the one TRACE's requirements pin)
  ROUGE-L F of ``Rouge(metrics=["rouge-l"]).get_scores(answer, generation)``: summary-level union
  LCS over sentences split on ``.``, words split on whitespace, case kept.
- ``edit_similarity`` (0-100, whole numbers): ``fuzz.ratio`` of fuzzywuzzy, which TRACE uses for
  Py150, computed with ``rapidfuzz`` (the Indel ratio that fuzzywuzzy computes with its
  python-Levenshtein backend and thefuzz with rapidfuzz) and rounded to a whole number as
  fuzzywuzzy does. Py150's literal placeholders (``<NUM_LIT>``, ``<STR_LIT:x>``...) are first
  restored as TRACE's ``eval_Py150.postprocess`` does; other text passes unchanged.
- ``sari`` (0-100): Hugging Face's SARI metric (``evaluate``/``datasets`` ``sari``, which TRACE
  loads for 20Minuten with the prompt as the source and the answer as the one reference):
  lower-cased sacrebleu 13a tokens, 1- to 4-gram add-F1, keep-F1 and delete-precision with
  0/0 := 1, averaged per sentence.

TRACE skips an example whose generation or answer is ``""`` in ROUGE-L and edit similarity but
still divides by all examples, so such an example scores 0 here; ROUGE-L also scores 0 where the
``rouge`` package raises (text of only dots). SARI skips nothing.

R holds every metric in [0, 1]: ``figure / SCALE[name]`` (so an R entry of a Py150 or 20Minuten
task is TRACE's figure divided by 100).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

METRICS = ("accuracy", "rouge_l", "edit_similarity", "sari")
#: a metric's figure / SCALE[name] lies in [0, 1] (the unit of R)
SCALE: dict[str, float] = {"accuracy": 1.0, "rouge_l": 1.0, "edit_similarity": 100.0, "sari": 100.0}


def accuracy(pred: str, ref: str, source: str = "") -> float:
    """Exact match after stripping surrounding whitespace (TRACE: ``caculate_accuracy``)."""
    return float(pred.strip() == ref.strip())


@contextmanager
def _recursion_room(frames: int) -> Iterator[None]:
    """The ``rouge`` package rebuilds an LCS recursively (one frame per word of a sentence pair)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, frames + 200))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def rouge_l(pred: str, ref: str, source: str = "") -> float:
    """TRACE's ROUGE-L (``metrics.score_rouge(target, prediction)``): the F of the ``rouge``
    package's summary-level ROUGE-L, reference first as TRACE passes it (the union LCS is not
    symmetric in its arguments)."""
    from rouge import Rouge

    if pred == "" or ref == "":
        return 0.0
    try:
        with _recursion_room(sys.getrecursionlimit() + 2 * (len(pred.split()) + len(ref.split()))):
            scores: Any = Rouge(metrics=["rouge-l"]).get_scores(ref, pred, avg=True)
    except ValueError:  # a side with no sentence left (only dots)
        return 0.0
    return float(scores["rouge-l"]["f"])


_PY150_LITERAL = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


def py150_literals(code: str) -> str:
    """TRACE's ``eval_Py150.postprocess``: ``<NUM_LIT>`` -> ``0``, bare string/char placeholders
    removed, and each ``<KIND_LIT:value>`` replaced (everywhere) by its value, in order found."""
    code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    for kind, value in _PY150_LITERAL.findall(code):
        code = code.replace(f"<{kind}_LIT:{value}>", value)
    return code


def edit_similarity(pred: str, ref: str, source: str = "") -> float:
    """TRACE's Py150 similarity for one example (``metrics.caculate_fuzz`` after
    ``eval_Py150.postprocess``): ``fuzz.ratio`` in 0-100, a whole number; 0 if a side is empty."""
    from rapidfuzz import fuzz

    pred, ref = py150_literals(pred), py150_literals(ref)
    if pred == "" or ref == "":
        return 0.0
    return float(round(fuzz.ratio(pred, ref)))


# SARI: a port of Hugging Face's SARI metric (github.com/huggingface/evaluate,
# metrics/sari/sari.py, Apache-2.0; the same code as datasets' ``load_metric("sari")`` that TRACE
# calls), itself adapted from tensor2tensor's sari_hook and Xu et al.'s SARI.py, restricted to
# one reference. Sums run in the same order as the original, so figures agree to the last bits.

@cache
def _tokenizer_13a() -> Callable[[str], str]:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def _normalize(text: str) -> str:
    """HF SARI's ``normalize``: lower-case, then sacrebleu's 13a tokenizer."""
    return _tokenizer_13a()(text.lower())


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p > 0 or r > 0 else 0.0


def _sari_ngram(src: list[str], out: list[str], ref: list[str]) -> tuple[float, float, float]:
    """(keep F1, delete precision, add F1) on one n-gram order; 0/0 counts as 1."""
    s, c, r = Counter(src), Counter(out), Counter(ref)
    keep = s & c
    keep_good = keep & r
    keep_all = s & r
    kp = sum(keep_good[g] / keep[g] for g in keep_good) / len(keep) if keep else 1.0
    kr = sum(keep_good[g] for g in keep_good) / sum(keep_all.values()) if keep_all else 1.0
    deleted = s - c
    del_good = deleted - r
    dp = sum(del_good[g] / deleted[g] for g in del_good) / len(deleted) if deleted else 1.0
    added = set(c) - set(s)
    add_good = added & set(r)
    add_all = set(r) - set(s)
    ap = len(add_good) / len(added) if added else 1.0
    ar = len(add_good) / len(add_all) if add_all else 1.0
    return _f1(kp, kr), dp, _f1(ap, ar)


def _grams(tokens: list[str], n: int) -> list[str]:
    return [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def sari(pred: str, ref: str, source: str = "") -> float:
    """Hugging Face's SARI (0-100) of one generation against one reference, ``source`` being the
    input text (TRACE's ``metrics.caculate_sari`` on one example): tokens are split on single
    spaces after normalisation, as there, so an empty text is one empty token."""
    s1, c1, r1 = _normalize(source).split(" "), _normalize(pred).split(" "), _normalize(ref).split(" ")
    keep, dele, add = [], [], []
    for n in range(1, 5):
        k, d, a = _sari_ngram(_grams(s1, n), _grams(c1, n), _grams(r1, n))
        keep.append(k)
        dele.append(d)
        add.append(a)
    return 100 * ((sum(keep) / 4 + sum(dele) / 4 + sum(add) / 4) / 3)


METRIC_FNS: dict[str, Callable[[str, str, str], float]] = {
    "accuracy": accuracy, "rouge_l": rouge_l, "edit_similarity": edit_similarity, "sari": sari,
}
