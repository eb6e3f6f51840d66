"""Search grids: a minimum or maximum closed at a limit of the parameter is no open edge."""

from __future__ import annotations

import pytest

from clbench.search import grid, grid_edges, space_record


def test_a_closed_minimum_is_not_an_edge_but_its_maximum_still_is() -> None:
    space = space_record({"method.strength": grid(0.0, 1.0, 10.0, closed_min=True), "trainer.lr": grid(1e-4, 1e-3, 1e-2)})
    assert space["method.strength"]["closed"] == "min" and "closed" not in space["trainer.lr"]
    assert grid_edges({"method.strength": 0.0, "trainer.lr": 1e-3}, space) == []  # the mechanism off: nothing lower
    assert grid_edges({"method.strength": 10.0}, space) == ["method.strength=10.0 (max)"]
    assert grid_edges({"trainer.lr": 1e-4}, space) == ["trainer.lr=0.0001 (min)"]


def test_a_closed_minimum_must_be_the_limit_zero() -> None:
    with pytest.raises(ValueError, match="starts at its limit 0"):
        grid(0.1, 1.0, closed_min=True)


def test_methods_close_only_grids_that_start_at_zero() -> None:
    from clbench.registry import METHODS, load_plugins

    load_plugins()
    for name in METHODS.names():
        for key, g in (getattr(METHODS.get(name), "search_space", None) or {}).items():
            assert not g.closed_min or min(g.values) == 0, (name, key)


def test_a_closed_maximum_is_not_an_edge_but_its_minimum_still_is() -> None:
    space = space_record({"method.size": grid(16, 256, 4096, closed_max=True), "method.both": grid(0.0, 1.0, 2.0, closed_min=True, closed_max=True)})
    assert space["method.size"]["closed"] == "max" and space["method.both"]["closed"] == "both"
    assert grid_edges({"method.size": 4096, "method.both": 2.0}, space) == []
    assert grid_edges({"method.both": 0.0}, space) == []
    assert grid_edges({"method.size": 16}, space) == ["method.size=16 (min)"]


def test_a_parameter_made_inert_by_another_is_no_edge_winner() -> None:
    space = space_record({"method.weight": grid(0.0, 0.5, 1.0, closed_min=True),
                          "method.temperature": grid(0.5, 1.0, 2.0, inert_when={"method.weight": 0.0})})
    assert space["method.temperature"]["inert_when"] == {"method.weight": 0.0}
    assert grid_edges({"method.weight": 0.0, "method.temperature": 2.0}, space) == []  # temperature does nothing
    assert grid_edges({"method.weight": 0.5, "method.temperature": 2.0}, space) == ["method.temperature=2.0 (max)"]


def test_methods_make_a_parameter_inert_only_through_a_value_of_their_own_space() -> None:
    from clbench.registry import METHODS, load_plugins

    load_plugins()
    for name in METHODS.names():
        space = getattr(METHODS.get(name), "search_space", None) or {}
        for key, g in space.items():
            for other, value in g.inert_when:
                assert other != key and other in space and value in space[other].values, (name, key, other)


def test_a_track_widens_a_grid_keeping_its_closed_end_and_inert_rule() -> None:
    from clbench.search import from_record, widen

    reg = {"method.alpha": grid(0.0, 1.0, 10.0, closed_min=True, inert_when={"method.t": 1.0}),
           "trainer.lr": grid(1e-3, 1e-2, closed_max=True)}
    wide = widen(reg, {"method.alpha": [0.0, 1.0, 10.0, 50.0]}, "x.yaml: search.m")
    assert wide["method.alpha"].values == (0.0, 1.0, 10.0, 50.0)
    assert wide["method.alpha"].closed_min and wide["method.alpha"].inert_when == (("method.t", 1.0),)
    assert wide["trainer.lr"] is reg["trainer.lr"]
    # a new top is an open edge again; the registered closed top no longer holds beyond it
    assert not widen(reg, {"trainer.lr": [1e-3, 1e-2, 1e-1]}, "w")["trainer.lr"].closed_max
    assert grid_edges({"method.alpha": 50.0}, space_record(wide)) == ["method.alpha=50.0 (max)"]
    assert grid_edges({"method.alpha": 10.0}, space_record(wide)) == []
    # the record round-trips
    assert {k: from_record(r) for k, r in space_record(wide).items()} == wide


def test_a_track_can_only_widen_a_grid_it_names_and_says_which_values_are_missing() -> None:
    from clbench.errors import ConfigError
    from clbench.search import widen

    reg = {"method.alpha": grid(0.0, 1.0, 10.0, closed_min=True)}
    with pytest.raises(ConfigError, match=r"x.yaml: search.lwf.method.alph.*method.alpha"):
        widen(reg, {"method.alph": [1.0]}, "x.yaml: search.lwf")
    with pytest.raises(ConfigError, match=r"search.lwf.method.alpha.*only widens.*missing \[0.0\]"):
        widen(reg, {"method.alpha": [1.0, 10.0, 50.0]}, "x.yaml: search.lwf")
    with pytest.raises(ConfigError, match="distinct"):
        widen(reg, {"method.alpha": [0.0, 1.0, 10.0, 10.0]}, "x.yaml: search.lwf")
