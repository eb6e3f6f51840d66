"""Owns the text-generation metrics of open-ended tasks (TRACE's per-task metrics), all in [0, 1].

- ``accuracy``: exact match after stripping surrounding whitespace.
- ``rouge_l``: ROUGE-L F1 on lower-cased whitespace tokens (longest common subsequence).
- ``edit_similarity``: ``difflib.SequenceMatcher`` ratio on characters, i.e. the
  ``fuzzywuzzy.fuzz.ratio`` TRACE uses for code completion (Py150), divided by 100.
- ``sari``: SARI (Xu et al., TACL 2016) for one reference: the mean of the add-F1, keep-F1 and
  delete-precision over 1- to 4-grams, each averaged over n, as in the EASSE/TRACE
  implementations for sentence simplification (20Minuten). The source is the prompt's text. As
  in Xu et al.'s reference code, an empty add set on both sides scores 0 (not 1), so a perfect
  deletion-only simplification scores 2/3.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable

METRICS = ("accuracy", "rouge_l", "edit_similarity", "sari")


def accuracy(pred: str, ref: str, source: str = "") -> float:
    return float(pred.strip() == ref.strip())


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str, source: str = "") -> float:
    p, r = pred.lower().split(), ref.lower().split()
    if not p or not r:
        return float(p == r)
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def edit_similarity(pred: str, ref: str, source: str = "") -> float:
    return difflib.SequenceMatcher(None, pred.strip(), ref.strip()).ratio()


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def sari(pred: str, ref: str, source: str = "") -> float:
    """SARI with a single reference (n = 1..4)."""
    s_tok, p_tok, r_tok = source.lower().split(), pred.lower().split(), ref.lower().split()
    add_f, keep_f, del_p = [], [], []
    for n in range(1, 5):
        s, p, r = _ngrams(s_tok, n), _ngrams(p_tok, n), _ngrams(r_tok, n)
        # additions: n-grams in the output but not in the source
        added_p, added_r = set(p) - set(s), set(r) - set(s)
        good_add = added_p & added_r
        add_prec = len(good_add) / len(added_p) if added_p else 0.0
        add_rec = len(good_add) / len(added_r) if added_r else 0.0
        add_f.append(_f1(add_prec, add_rec))
        # keeps: source n-grams retained by the output (counts clipped, as in the original)
        keep_p = s & p
        keep_r = s & r
        good_keep = keep_p & keep_r
        kp = sum(good_keep.values()) / sum(keep_p.values()) if keep_p else 0.0
        kr = sum(good_keep.values()) / sum(keep_r.values()) if keep_r else 0.0
        keep_f.append(_f1(kp, kr))
        # deletions: source n-grams dropped by the output; precision only
        del_out = s - p
        del_ref = s - r
        good_del = del_out & del_ref
        del_p.append(sum(good_del.values()) / sum(del_out.values()) if del_out else 0.0)
    return (sum(add_f) / 4 + sum(keep_f) / 4 + sum(del_p) / 4) / 3


METRIC_FNS: dict[str, Callable[[str, str, str], float]] = {
    "accuracy": accuracy, "rouge_l": rouge_l, "edit_similarity": edit_similarity, "sari": sari,
}
