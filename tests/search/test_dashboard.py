"""optuna-dashboard pointed at a study's storage shows the nasforge study: its WSGI app, called in-process as
a web server would call it, lists the study, its objectives by name and every trial with its decisions and
nasforge's records (``optuna-dashboard sqlite:///nasforge-studies.db`` serves the same app)."""

from __future__ import annotations

import json
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

import nasforge
from nasforge.search.objectives import Constraint, Objective
from nasforge.search.study import Search

optuna_dashboard = pytest.importorskip("optuna_dashboard")  # in the `test` and `dashboard` extras

SPACE = """
name: dash_space
inputs: {x: [B, 8]}
graph:
  - {id: fc, op: linear, out: {choice: [4, 8, 16]}}
  - {id: act, op: {op_choice: [relu, tanh, gelu]}}
  - {id: head, op: linear, out: 2}
"""


def get(app: Any, path: str) -> dict[str, Any]:
    """GET ``path`` from a WSGI app; the decoded JSON body (a non-200 status fails the test)."""
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, REQUEST_METHOD="GET")
    status: list[str] = []
    body = b"".join(app(environ, lambda line, headers, exc_info=None: status.append(line)))
    assert status == ["200 OK"], body[:500]
    return json.loads(body)


def test_the_dashboard_lists_the_study_and_its_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    search = Search(nasforge.loads(SPACE), "random", [Objective.parse("params:min")],
                    [Constraint.parse("params<=200")], budget=4, storage=storage, study_name="dash", seed=1)
    study = search.run()
    app = optuna_dashboard.wsgi(storage)

    summaries = get(app, "/api/studies")["study_summaries"]
    assert [(s["study_name"], s["directions"]) for s in summaries] == [("dash", ["minimize"])]
    attrs = {a["key"]: a["value"] for a in summaries[0]["user_attrs"]}
    assert attrs["space"] == "dash_space" and attrs["space_hash"] == search.space_hash

    detail = get(app, f"/api/studies/{summaries[0]['study_id']}")
    assert detail["name"] == "dash" and detail["objective_names"] == ["params"]
    shown = {t["number"]: t for t in detail["trials"]}
    assert sorted(shown) == [t.number for t in study.trials]
    for trial in study.trials:
        seen = shown[trial.number]
        assert seen["state"] == trial.state.name.capitalize()
        assert seen["values"] == trial.values
        assert {p["name"]: p["param_internal_value"] for p in seen["params"]}.keys() == trial.params.keys()
        # nasforge's records, feasibility included: optuna-dashboard 0.21 reads constraint values in the
        # list form of Optuna 4, not the named ones Optuna 5 stores, so its own column stays empty
        records = {a["key"]: a["value"] for a in seen["user_attrs"]}
        assert {"assignment", "graph_hash", "metrics", "seconds"} <= records.keys()
        assert records["feasible"] == str(trial.user_attrs["metrics"]["params"] <= 200)
