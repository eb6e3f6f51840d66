"""Golden tests: clbench.textmetrics against the packages TRACE's evaluation code uses.

TRACE (github.com/BeyonderXX/TRACE, ``metrics.py``) averages per-example scores over a task and
skips (scores 0) an empty generation or answer in ROUGE-L and edit similarity; the TRACE-style
aggregates below repeat that loop around the reference packages themselves.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from clbench.textmetrics import (
    METRIC_FNS,
    METRICS,
    SCALE,
    accuracy,
    edit_similarity,
    py150_literals,
    rouge_l,
    sari,
)

TOL = 1e-9

# (generation, answer): MeetingBank-like summaries with sentence-final punctuation, casing,
# several sentences, an empty side and text of only dots
ROUGE_EXAMPLES = [
    ("The council approved the budget.", "The city council approved the budget on Tuesday night"),
    ("the council approved the budget", "The Council approved the budget."),
    ("Council members discussed the zoning amendment. The motion passed 7-2. A public hearing is set "
     "for May.", "The council discussed a zoning amendment and passed the motion 7 to 2. A public "
     "hearing will be held in May."),
    ("The budget passed. The council met.", "The council passed the budget. The mayor met the council."),
    ("Approved.", "Approved."),
    ("", "The council approved the budget."),
    ("The council approved the budget.", ""),
]

# (generation, answer): Py150-like code lines, with TRACE's literal placeholders
EDIT_EXAMPLES = [
    ("self . assertEqual ( response . status_code , <NUM_LIT> )",
     "self . assertEqual ( resp . status_code , <NUM_LIT> )"),
    ("return os . path . join ( <STR_LIT:data> , name )", "return os . path . join ( self . root , name )"),
    ("for i in range ( len ( x ) ) :", "for item in items :"),
    ("self . assertEqual ( len ( results ) , 0 )", "self . assertTrue ( result . ok )"),
    ("logger . info ( '<STR_LIT>' , name )", "logging . getLogger ( __name__ )"),
    (" import os", "import os"),
    ("import os", "import os"),
    ("", "import os"),
    ("<STR_LIT>", "x = <STR_LIT>"),
]

# (source, generation, answer) -> Hugging Face SARI (0-100), computed by the metric's own script
# (huggingface/evaluate metrics/sari/sari.py @ a7dd338, the code of datasets' load_metric("sari")
# TRACE calls) with evaluate 0.4.6 and sacrebleu 2.6.0:
#   evaluate.load("<path>/sari.py").compute(sources=[s], predictions=[p], references=[[a]])["sari"]
# CLBENCH_HF_SARI=<path to that sari.py> makes test_sari_against_the_hugging_face_script redo it.
SARI_GOLDEN = [
    ("Der Bundesrat hat am Mittwoch beschlossen, dass die Massnahmen gegen das Coronavirus bis Ende "
     "Februar verlängert werden.", "Der Bundesrat verlängert die Corona-Massnahmen bis Ende Februar.",
     "Die Corona-Massnahmen gelten bis Ende Februar.", 75.66951566951566),
    ("Die Stadt Zürich baut eine neue Velobrücke über die Limmat, die im Jahr 2025 eröffnet werden soll.",
     "Die Stadt Zürich baut eine neue Velobrücke über die Limmat, die im Jahr 2025 eröffnet werden soll.",
     "Zürich baut eine neue Velobrücke. Sie soll 2025 eröffnen.", 46.04882154882155),
    ("The council approved the budget after a long debate on Tuesday.", "The council approved the budget.",
     "The council approved the budget.", 100.0),
    ("The council approved the budget after a long debate on Tuesday.", "", "The council approved the budget.",
     22.16329966329966),
    ("", "", "", 100.0),
    # the example in the metric's own documentation, with its first reference only
    ("About 95 species are currently accepted .", "About 95 you now get in .",
     "About 95 species are currently known .", 21.805555555555557),
]


def _trace_rouge(preds: list[str], refs: list[str]) -> float:
    """TRACE's ``caculate_rouge`` around the ``rouge`` package."""
    from rouge import Rouge

    total = 0.0
    for p, r in zip(preds, refs, strict=True):
        if p == "" or r == "":
            continue
        total += Rouge(metrics=["rouge-l"]).get_scores(r, p, avg=True)["rouge-l"]["f"]
    return total / len(preds)


def test_the_metric_table_is_complete() -> None:
    assert set(METRICS) == set(METRIC_FNS) == set(SCALE)


@pytest.mark.parametrize(("pred", "ref"), ROUGE_EXAMPLES)
def test_rouge_l_is_the_rouge_package_as_trace_calls_it(pred: str, ref: str) -> None:
    assert rouge_l(pred, ref) == pytest.approx(_trace_rouge([pred], [ref]), abs=TOL)


def test_rouge_l_task_mean_is_traces_figure_and_keeps_its_argument_order() -> None:
    from rouge import Rouge

    preds, refs = [p for p, _ in ROUGE_EXAMPLES], [r for _, r in ROUGE_EXAMPLES]
    ours = sum(rouge_l(p, r) for p, r in ROUGE_EXAMPLES) / len(ROUGE_EXAMPLES)
    assert ours == pytest.approx(_trace_rouge(preds, refs), abs=TOL)
    # the example: the full stop is a sentence boundary, not part of "budget"
    assert rouge_l(*ROUGE_EXAMPLES[0]) == pytest.approx(2 * 5 / 14, abs=1e-7)
    # summary-level union LCS is not symmetric: TRACE passes the answer first
    pred, ref = ROUGE_EXAMPLES[3]
    swapped = Rouge(metrics=["rouge-l"]).get_scores(pred, ref)[0]["rouge-l"]["f"]
    assert abs(rouge_l(pred, ref) - swapped) > 0.1


def test_rouge_l_scores_text_the_package_rejects_as_zero() -> None:
    from rouge import Rouge

    with pytest.raises(ValueError):
        Rouge(metrics=["rouge-l"]).get_scores("The council approved the budget.", "...")
    assert rouge_l("...", "The council approved the budget.") == 0.0
    long = " ".join(f"w{i}" for i in range(1100))  # the package recurses once per word
    assert rouge_l(long, long) == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize(("pred", "ref"), EDIT_EXAMPLES)
def test_edit_similarity_is_fuzz_ratio_after_traces_py150_postprocess(pred: str, ref: str) -> None:
    from rapidfuzz.distance import Indel

    p, r = py150_literals(pred), py150_literals(ref)
    # fuzz.ratio = round(100 * Indel similarity / (len a + len b)); TRACE scores an empty side 0
    expected = 0 if not p or not r else round(100 * Indel.normalized_similarity(p, r))
    assert edit_similarity(pred, ref) == expected
    assert float(edit_similarity(pred, ref)).is_integer() and 0 <= edit_similarity(pred, ref) <= 100


@pytest.mark.skipif(importlib.util.find_spec("fuzzywuzzy") is None, reason="fuzzywuzzy not installed")
def test_edit_similarity_against_fuzzywuzzy() -> None:
    """fuzzywuzzy itself, where installed with its python-Levenshtein backend."""
    from fuzzywuzzy import fuzz

    if fuzz.SequenceMatcher.__module__ != "fuzzywuzzy.StringMatcher":
        pytest.skip("fuzzywuzzy runs on difflib here (python-Levenshtein not installed)")
    for pred, ref in EDIT_EXAMPLES:
        p, r = py150_literals(pred), py150_literals(ref)
        assert edit_similarity(pred, ref) == (fuzz.ratio(p, r) if p and r else 0)


def test_py150_postprocess() -> None:
    assert py150_literals("x = <NUM_LIT> + len ( <STR_LIT> ) + <CHAR_LIT>") == "x = 0 + len (  ) + "
    assert py150_literals("open ( <STR_LIT:data.csv> , <STR_LIT:r> ) [ <NUM_LIT:3> ]") == 'open ( data.csv , r ) [ 3 ]'
    assert py150_literals("print ( 'plain' )") == "print ( 'plain' )"


@pytest.mark.parametrize(("source", "pred", "ref", "figure"), SARI_GOLDEN)
def test_sari_is_hugging_faces_sari(source: str, pred: str, ref: str, figure: float) -> None:
    assert sari(pred, ref, source) == pytest.approx(figure, abs=TOL)


@pytest.mark.skipif(not os.environ.get("CLBENCH_HF_SARI"), reason="set CLBENCH_HF_SARI to HF's sari.py")
def test_sari_against_the_hugging_face_script() -> None:
    import evaluate

    hf = evaluate.load(os.environ["CLBENCH_HF_SARI"])
    for source, pred, ref, figure in SARI_GOLDEN:
        assert hf.compute(sources=[source], predictions=[pred], references=[[ref]])["sari"] == pytest.approx(figure, abs=TOL)
    # TRACE's caculate_sari: one call over the task = the mean of the per-example figures
    sources, preds, refs = ([e[i] for e in SARI_GOLDEN] for i in range(3))
    whole = hf.compute(sources=sources, predictions=preds, references=[[r] for r in refs])["sari"]
    assert whole == pytest.approx(sum(sari(p, r, s) for s, p, r in zip(sources, preds, refs, strict=True)) / len(preds), abs=TOL)


def test_sari_by_hand() -> None:
    # output == reference == source: nothing to add or delete (0/0 := 1), all kept
    assert sari("the cat sat", "the cat sat", "the cat sat") == pytest.approx(100.0)
    # a correct deletion-only simplification scores 100 (0/0 := 1 for the add term)
    assert sari("the cat sat", "the cat sat", "the big cat sat there") == pytest.approx(100.0)
    # copying the source keeps what is right but deletes nothing
    assert 0.0 < sari("the big cat sat there", "the cat sat", "the big cat sat there") < 100.0
    # 13a tokens, lower-cased: punctuation and case do not change the figure
    assert sari("The cat sat.", "the cat sat .", "The big cat sat there.") == pytest.approx(100.0)


def test_accuracy_strips_surrounding_whitespace() -> None:
    assert accuracy(" hawkish ", "hawkish") == 1.0 and accuracy("dovish", "hawkish") == 0.0
