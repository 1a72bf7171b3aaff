"""Scenario files: the load generator's client stacks (loadtests/scenario.py)."""

from __future__ import annotations

import pytest

from loadtests.scenario import ScenarioError, parse_scenario


def test_a_scenario_runs_the_lean_clients_unless_it_names_stacks() -> None:
    base = {"targets": ["relay"], "devices": [1]}
    assert parse_scenario(base, name="x").clients == ("lean",)
    both = parse_scenario({**base, "clients": ["lean", "trio-websocket"]}, name="x")
    assert both.clients == ("lean", "trio-websocket")


@pytest.mark.parametrize("clients", [[], ["websockets"], "lean"])
def test_unknown_client_stacks_are_refused(clients: object) -> None:
    with pytest.raises(ScenarioError, match="clients must be a non-empty list"):
        parse_scenario({"targets": ["relay"], "devices": [1], "clients": clients}, name="x")

