"""serve_config.yaml, ServeArgs, request validation and rollout planning; no Ray cluster.

The config is checked against Serve's own schema (``ray.serve.schema``, importable without a
running cluster), then against ``ServeArgs``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from ray_app.serving.args import ServeArgs
from ray_app.serving.rollout import (
    HEADER,
    Change,
    RolloutError,
    deploy,
    load_config,
    plan,
    render,
    serving_state,
    write_config,
)
from ray_app.serving.schemas import PredictRequest, limited_request

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "serve_config.yaml"
VERSIONS = {"champion": 3, "challenger": 5, "3": 3, "5": 5, "4": 4}


def resolve(ref: str) -> int | None:
    return VERSIONS.get(ref)


def test_the_shipped_config_is_a_serve_config_for_build_app() -> None:
    text = CONFIG.read_text()
    assert text.startswith(HEADER)  # what `ray-app rollout` writes back
    config = yaml.safe_load(text)
    schema = ServeDeploySchema.model_validate(config)
    assert schema.controller_options is not None
    (app,) = schema.applications
    assert (app.name, app.route_prefix, app.import_path) == (
        "ray-app",
        "/",
        "ray_app.serving.app:build_app",
    )
    args = ServeArgs.model_validate(app.args)
    assert args.data_root is None  # the settings decide: `data` locally, RAY_APP_* on clusters
    assert [(v.name, v.ref, v.weight) for v in args.variants] == [
        ("champion", "champion", 1.0),
        ("challenger", "challenger", 0.0),
    ]
    assert args.num_cpus.ingress + len(args.variants) * args.num_cpus.variant <= 1.0
    state = serving_state(config)
    assert state.ingress == args.ingress_config()
    assert {n: v.ref for n, v in state.variants.items()} == {
        "champion": "champion",
        "challenger": "challenger",
    }


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({"variants": [{"name": "a", "ref": "champion", "weight": 0.5}]}, "sum to 1"),
        (
            {
                "variants": [
                    {"name": "a", "ref": "champion", "weight": 1.0},
                    {"name": "a", "ref": "challenger", "weight": 0.0},
                ]
            },
            "unique",
        ),
        ({"shadow": {"variant": "nope", "fraction": 0.5}}, "not a variant"),
        ({"variants": [{"name": "Bad Name", "ref": "x", "weight": 1.0}]}, "pattern"),
        ({"variants": [{"name": "a", "ref": "0", "weight": 1.0}]}, "pattern"),
        ({"max_tickers": 0}, "greater than or equal"),
        ({"api_keys_env": "NOT-A-NAME"}, "pattern"),
        ({"datarot": "x"}, "Extra inputs"),
    ],
)
def test_bad_args_are_refused(args: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        ServeArgs.model_validate(args)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"tickers": []}, "at least 1"),
        ({"tickers": ["A", "B", "C", "D"]}, "at most 3"),
        ({"tickers": ["AAPL"], "extra": 1}, "Extra inputs"),
        ({"tickers": "AAPL"}, "valid list"),
        ({"tickers": [1]}, "valid string"),
        ({"tickers": ["AA PL"]}, "pattern"),
        ({"tickers": ["AAPL", "aapl"]}, "repeat: AAPL"),
        ({"tickers": ["AAPL"], "as_of": 20120301}, "YYYY-MM-DD"),
        ({"tickers": ["AAPL"], "as_of": "2012-3-1"}, "YYYY-MM-DD"),
        ({"tickers": ["AAPL"], "as_of": "2012-02-30"}, "date"),
        ({}, "Field required"),
    ],
)
def test_malformed_requests_are_refused(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        limited_request(3).model_validate(body)


def test_a_good_request_is_normalised() -> None:
    request = limited_request(3).model_validate({"tickers": ["aapl"], "as_of": "2012-03-01"})
    assert isinstance(request, PredictRequest)
    assert request.tickers == ["AAPL"] and str(request.as_of) == "2012-03-01"


def state_of(config: dict[str, Any] | None = None) -> Any:
    return serving_state(config or yaml.safe_load(CONFIG.read_text()))


def test_a_rollout_moves_weight_and_pins_versions() -> None:
    new = plan(state_of(), Change(challenger_weight=0.1, shadow="challenger"), resolve)
    assert new.ingress.weights == {"champion": 0.9, "challenger": 0.1}
    assert new.ingress.shadow is not None and new.ingress.shadow.fraction == 1.0
    assert {n: v.ref for n, v in new.variants.items()} == {"champion": "3", "challenger": "5"}
    later = plan(new, Change(shadow_fraction=0.25, pins={"challenger": "4"}), resolve)
    assert later.ingress.shadow is not None and later.ingress.shadow.fraction == 0.25
    assert later.variants["challenger"].ref == "4"
    assert plan(later, Change(no_shadow=True), resolve).ingress.shadow is None


def test_a_rollout_serves_the_newest_feature_set_unless_told_otherwise() -> None:
    assert plan(state_of(), Change(), resolve, "fs-new").ingress.feature_version == "fs-new"
    told = Change(feature_version="fs-old")
    assert plan(state_of(), told, resolve, "fs-new").ingress.feature_version == "fs-old"
    assert plan(state_of(), Change(), resolve).ingress.feature_version is None


def test_an_alias_that_points_nowhere_stays_an_alias() -> None:
    new = plan(state_of(), Change(), lambda ref: 5 if ref == "challenger" else None)
    assert {n: v.ref for n, v in new.variants.items()} == {
        "champion": "champion",
        "challenger": "5",
    }


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (Change(challenger_weight=1.5), "weights"),
        (Change(shadow="nobody"), "not a variant"),
        (Change(shadow_fraction=0.5), "needs a shadow variant"),
        (Change(pins={"third": "4"}), "no variant named third"),
    ],
)
def test_bad_rollouts_are_refused(change: Change, reason: str) -> None:
    with pytest.raises(RolloutError, match=reason):
        plan(state_of(), change, resolve)


def test_the_rewritten_file_changes_user_config_only(tmp_path: Path) -> None:
    config = load_config(CONFIG)
    original = copy.deepcopy(config)
    new = plan(serving_state(config), Change(challenger_weight=0.2), resolve)
    path = tmp_path / "serve_config.yaml"
    write_config(path, render(config, new))
    assert config == original
    written = load_config(path)
    assert path.read_text().startswith("# Ray Serve config")
    app, before = written["applications"][0], original["applications"][0]
    assert app["args"] == before["args"]  # args changes would restart every replica
    assert {k: v for k, v in app.items() if k != "deployments"} == {
        k: v for k, v in before.items() if k != "deployments"
    }
    assert serving_state(written) == new


def test_deploying_without_a_cluster_says_so_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(RolloutError, match=r"cannot reach the Ray dashboard at http://127.0.0.1:9"):
        deploy(CONFIG, "http://127.0.0.1:9")
