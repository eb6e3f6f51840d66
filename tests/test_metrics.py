"""Metrics of the accuracy matrix R on hand-computed examples, edge cases and Avalanche parity.

Convention (as in clbench.metrics): R[i, j] = accuracy on experience j's test split after training
through experience i, 0-based; T = number of experiences; b[j] = accuracy on j before training.

Relationship to Avalanche 0.6 (checked on random matrices below):
- ``avalanche.evaluation.functional.forgetting(R)`` returns a matrix F_av with
  F_av[t, k] = R[k, k] - R[t, k] for t > k (0 for t <= k). Its last row averaged over the first
  T-1 columns is Avalanche's stream forgetting, and equals **-BWT** exactly:
  ``mean(F_av[T-1, :T-1]) == -backward_transfer(R)``.
- The standalone metric classes agree: ``Forgetting`` fed ``update(k, R[k, k], initial=True)`` then
  ``update(k, R[T-1, k])`` (what ``StreamForgetting`` does after training on experience k and at
  the last evaluation) gives {k: R[k, k] - R[T-1, k]}; ``BWT`` gives its negation, whose mean is
  clbench's BWT. ``ForwardTransfer`` fed ``update(k, b[k], initial=True)`` then
  ``update(k, R[k-1, k])`` averages to clbench's FWT.
- clbench's ``forgetting`` is Chaudhry et al.'s (max over l in [j, T-1] of R[l, j] - R[T-1, j]),
  **not** Avalanche's "forgetting": it is always >= Avalanche's (= -BWT), with equality exactly
  when, for every j < T-1, the best accuracy on j before the end is the one right after training
  on j (R[j, j] >= R[l, j] for l in [j, T-2]).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from clbench import metrics as M

# 2x2, hand-computed:
#   R = [[0.9, 0.1],      b = [0.1, 0.2]
#        [0.6, 0.8]]
#   ACC  = (0.6 + 0.8) / 2                       = 0.7
#   AIA  = (0.9 + (0.6 + 0.8) / 2) / 2           = (0.9 + 0.7) / 2 = 0.8
#   BWT  = R[1,0] - R[0,0] = 0.6 - 0.9           = -0.3
#   FWT  = R[0,1] - b[1]   = 0.1 - 0.2           = -0.1
#   F    = max_{l in [0,0]} (R[l,0] - R[1,0])    = 0.9 - 0.6 = 0.3
#   LA   = (0.9 + 0.8) / 2                       = 0.85
#   Transfer (MTIL) = mean_{i<1} R[i,1] = R[0,1] = 0.1
R2 = [[0.9, 0.1], [0.6, 0.8]]
B2 = [0.1, 0.2]
EXPECTED2 = {"acc": 0.7, "avg_inc_acc": 0.8, "bwt": -0.3, "fwt": -0.1, "forgetting": 0.3,
             "plasticity": 0.85, "zero_shot_transfer": 0.1}

# 3x3, hand-computed; accuracy on experience 0 *rises* after experience 1 (backward transfer),
# so Chaudhry's forgetting (max over l) differs from -BWT:
#   R = [[0.5, 0.3, 0.2 ],     b = [0.1, 0.2, 0.15]
#        [0.8, 0.9, 0.25],
#        [0.6, 0.4, 0.7 ]]
#   ACC  = (0.6 + 0.4 + 0.7) / 3                                 = 1.7/3   = 0.566667
#   AIA  = (0.5 + (0.8 + 0.9)/2 + 1.7/3) / 3 = (0.5 + 0.85 + 0.566667)/3   = 0.638889
#   BWT  = ((0.6 - 0.5) + (0.4 - 0.9)) / 2 = (0.1 - 0.5) / 2               = -0.2
#   FWT  = ((R[0,1] - b1) + (R[1,2] - b2)) / 2 = ((0.3-0.2) + (0.25-0.15))/2 = 0.1
#   F    = j=0: max(0.5 - 0.6, 0.8 - 0.6) = 0.2;  j=1: max(0.9 - 0.4) = 0.5
#          -> (0.2 + 0.5) / 2                                              = 0.35
#   LA   = (0.5 + 0.9 + 0.7) / 3                                           = 0.7
#   Avalanche forgetting = ((0.5-0.6) + (0.9-0.4)) / 2 = 0.2 = -BWT  (!= F = 0.35)
#   Transfer (MTIL) = (R[0,1] + (R[0,2] + R[1,2]) / 2) / 2 = (0.3 + 0.225) / 2 = 0.2625
R3 = [[0.5, 0.3, 0.2], [0.8, 0.9, 0.25], [0.6, 0.4, 0.7]]
B3 = [0.1, 0.2, 0.15]
EXPECTED3 = {"acc": 1.7 / 3, "avg_inc_acc": (0.5 + 0.85 + 1.7 / 3) / 3, "bwt": -0.2, "fwt": 0.1,
             "forgetting": 0.35, "plasticity": 0.7, "zero_shot_transfer": 0.2625}


@pytest.mark.parametrize(("R", "b", "expected"), [(R2, B2, EXPECTED2), (R3, B3, EXPECTED3)])
def test_hand_computed_values(R: list[list[float]], b: list[float], expected: dict[str, float]) -> None:
    assert M.average_accuracy(R) == pytest.approx(expected["acc"])
    assert M.average_incremental_accuracy(R) == pytest.approx(expected["avg_inc_acc"])
    assert M.backward_transfer(R) == pytest.approx(expected["bwt"])
    assert M.forward_transfer(R, b) == pytest.approx(expected["fwt"])
    assert M.forgetting(R) == pytest.approx(expected["forgetting"])
    assert M.learning_accuracy(R) == pytest.approx(expected["plasticity"])
    assert M.zero_shot_transfer(R) == pytest.approx(expected["zero_shot_transfer"])
    got = M.summarize(R, b)
    assert set(got) == set(expected)
    assert got == pytest.approx(expected)


def test_accepts_numpy_and_lists_alike() -> None:
    b = np.asarray(B3)  # an ndarray works though the signature says Sequence[float]
    assert M.summarize(np.asarray(R3), b) == pytest.approx(M.summarize(R3, B3))  # type: ignore[arg-type]


def test_single_experience_gives_nan_transfer_and_forgetting() -> None:
    R, b = [[0.7]], [0.1]
    assert M.average_accuracy(R) == pytest.approx(0.7)
    assert M.average_incremental_accuracy(R) == pytest.approx(0.7)
    assert M.learning_accuracy(R) == pytest.approx(0.7)
    assert math.isnan(M.backward_transfer(R))
    assert math.isnan(M.forward_transfer(R, b))
    assert math.isnan(M.forgetting(R))
    assert math.isnan(M.zero_shot_transfer(R))


@pytest.mark.parametrize("bad", [[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], [0.1, 0.2], [], [[]]])
def test_non_square_or_empty_raises(bad: object) -> None:
    for fn in (M.average_accuracy, M.average_incremental_accuracy, M.backward_transfer,
               M.forgetting, M.learning_accuracy):
        with pytest.raises(ValueError, match="square"):
            fn(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        M.forward_transfer(bad, [0.0, 0.0])  # type: ignore[arg-type]


def test_pretraining_vector_must_match() -> None:
    with pytest.raises(ValueError, match="length 2"):
        M.forward_transfer(R2, [0.1, 0.2, 0.3])


def _random_matrices() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(size=(T, T)) for T in (2, 3, 4, 5, 7) for _ in range(4)]


@pytest.mark.parametrize("R", _random_matrices())
def test_bwt_is_minus_avalanche_functional_forgetting(R: np.ndarray) -> None:
    from avalanche.evaluation.functional import forgetting as av_forgetting

    T = len(R)
    f_av = av_forgetting(R)
    assert f_av.shape == (T, T)
    assert np.mean(f_av[-1, : T - 1]) == pytest.approx(-M.backward_transfer(R))
    # Chaudhry forgetting bounds Avalanche's from above (max over l includes l = j)
    assert M.forgetting(R) >= np.mean(f_av[-1, : T - 1]) - 1e-12


@pytest.mark.parametrize("R", _random_matrices())
def test_avalanche_metric_classes_fed_in_documented_order(R: np.ndarray) -> None:
    from avalanche.evaluation.metrics.forgetting_bwt import BWT, Forgetting
    from avalanche.evaluation.metrics.forward_transfer import ForwardTransfer

    T = len(R)
    b = np.linspace(0.05, 0.15, T).tolist()
    forg, bwt, fwt = Forgetting(), BWT(), ForwardTransfer()
    for k in range(T):
        fwt.update(k, float(b[k]), initial=True)  # evaluation before any training
    for i in range(T):  # after training on experience i, evaluate every experience
        for k in range(T):
            if k == i:
                forg.update(k, float(R[i, k]), initial=True)
                bwt.update(k, float(R[i, k]), initial=True)
            elif k < i and i == T - 1:  # stream metrics report the last evaluation
                forg.update(k, float(R[i, k]))
                bwt.update(k, float(R[i, k]))
            if k == i + 1:
                fwt.update(k, float(R[i, k]))
    assert sorted(forg.result()) == list(range(T - 1))
    assert np.mean(list(bwt.result().values())) == pytest.approx(M.backward_transfer(R))
    assert np.mean(list(forg.result().values())) == pytest.approx(-M.backward_transfer(R))
    assert np.mean(list(fwt.result().values())) == pytest.approx(M.forward_transfer(R, b))


def test_chaudhry_forgetting_equals_minus_bwt_when_diagonal_is_the_peak() -> None:
    # accuracy on each experience only decays after it is learned -> the max is at l = j
    R = np.array([[0.9, 0.0, 0.0], [0.7, 0.95, 0.0], [0.5, 0.6, 0.9]])
    assert M.forgetting(R) == pytest.approx(-M.backward_transfer(R))
    assert M.forgetting(R3) > -M.backward_transfer(R3)  # the 3x3 example above: 0.35 > 0.2


def test_seed_statistics_are_sample_sd_over_finite_values() -> None:
    import statistics

    from clbench.stats import mean, sample_sd

    vals = [0.61, 0.58, 0.64, float("nan")]
    assert mean(vals) == pytest.approx(statistics.fmean(vals[:3]))
    assert sample_sd(vals) == pytest.approx(statistics.stdev(vals[:3]))  # ddof=1, NaN left out
    assert math.isnan(sample_sd([0.5])) and sample_sd([0.5], single=0.0) == 0.0
    assert math.isnan(mean([float("nan")]))


def test_every_summary_metric_is_declared_once_with_label_and_direction() -> None:
    got = M.summarize(R3, B3)
    assert set(got) <= set(M.METRICS)  # tables, boards and tracks can name each of them
    assert M.metric_label("forgetting") == "Forgetting" and not M.higher_is_better("forgetting")
    assert M.higher_is_better("acc") and not M.higher_is_better("mean_error")
    assert M.metric_label("undeclared_x") == "undeclared_x" and M.higher_is_better("undeclared_x")


def test_summarize_is_every_declared_metric_of_R_and_nothing_else() -> None:
    from clbench.metrics import METRICS, summarize

    R, b = [[0.9, 0.1], [0.5, 0.8]], [0.1, 0.2]
    got = summarize(R, b)
    assert list(got) == [m.name for m in METRICS.values() if m.of_R is not None]
    assert got["acc"] == pytest.approx(0.65) and got["fwt"] == pytest.approx(0.1 - 0.2)
    assert got["forgetting"] == pytest.approx(0.4) and got["plasticity"] == pytest.approx(0.85)
