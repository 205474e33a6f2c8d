"""The serving application on the session's Ray cluster, with tiny injected models.

One Serve instance for the module, on a free port, deployed declaratively (the controller
path `serve deploy` takes), so that changing a deployment's user_config reconfigures the
running replicas instead of replacing them. The Ingress runs as many replicas as the shipped
serve_config.yaml gives it (2), behind HAProxy: what holds "on every replica" (the rate limit,
key rotation, overload) is tested across both, and per-replica views (shadow counts, the
precomputed tables) are read from each replica's own address. The loader (``FakeRegistry``,
named by its import path in the args) serves two tiny MLPs (versions 1 and 2), a model that
raises (3) and one that sleeps 5 s per call (4).
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import io
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
import torch
import yaml
from scipy.stats import binom, spearmanr

from ray_app.core.api_keys import hash_api_key, new_api_key
from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import build_features
from ray_app.data.ingest import read_bars, run_ingest
from ray_app.data.predictions import COLUMNS, read_predictions
from ray_app.models.families import TrainedModel, get
from ray_app.models.families._torch import TorchFamily, TorchParams
from ray_app.models.networks import StandardScaler
from ray_app.serving.api import VALID_REQUEST_ID
from ray_app.serving.args import ServeArgs
from ray_app.serving.features import FeatureTable
from ray_app.serving.loader import ServedModel
from tests.integration.conftest import run_cli
from tests.integration.vault import Bao

pytestmark = pytest.mark.integration

TICKERS = ["AAPL", "GOOG", "IBM", "MSFT"]
SERVE_CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"
SECRET_PATH = "serve-app"  # the app's secret in Vault (KV v2, mount secret/)
KEY = new_api_key()  # operator: what most tests here send
PREDICT_KEY = new_api_key()
LIMITED_KEY = new_api_key()  # predict, 5 requests per window
ROTATED_KEY = new_api_key()
ADMIN_KEY = new_api_key()
LIMITED = 5
VERSIONS = {"champion": 1, "challenger": 2, "raising": 3, "sleepy": 4}
VARIANTS = ["champion", "challenger"]
SHIPPED_INGRESS = yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]["deployments"][0]
INGRESS_REPLICAS = SHIPPED_INGRESS["num_replicas"]


def tiny_model(table: FeatureTable, version: int) -> TrainedModel:
    """An MLP with random (seeded) weights and a scaler fitted on the table: predictions
    differ per ticker, day and version, which is all serving needs to show."""
    hparams, family = TorchParams(hidden_size=4, num_layers=1, dropout=0.0), get("mlp")
    assert isinstance(family, TorchFamily)
    module = family.build(len(table.columns), hparams, seed=version)
    generator = torch.Generator().manual_seed(version)
    state = {
        k: v + 0.05 * torch.randn(v.shape, generator=generator)
        for k, v in module.state_dict().items()
    }
    values = np.concatenate([v for _, v in table.frames.values()])
    scaler = StandardScaler.fit(np.nan_to_num(values))
    return TrainedModel(
        "mlp", hparams, table.columns, scaler, state, 1, table.feature_version, "test", version
    )


class Raising(ServedModel):
    def predict(self, x: np.ndarray) -> np.ndarray:
        raise RuntimeError("this model always fails")


class Sleepy(ServedModel):
    def predict(self, x: np.ndarray) -> np.ndarray:
        time.sleep(5)  # blocks the replica, as a stuck model would
        return np.zeros(len(x))


class FakeRegistry:
    """The test's model loader: each ref names one of four models; loading takes 0.3 s."""

    def __init__(self, args: ServeArgs) -> None:
        self.table = FeatureTable.load(args.settings())

    def __call__(self, ref: str) -> ServedModel:
        time.sleep(0.3)
        version = VERSIONS.get(ref) or int(ref)
        kind = {3: Raising, 4: Sleepy}.get(version, ServedModel)
        return kind("tiny", version, tiny_model(self.table, version))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fast_serve_env() -> dict[str, str]:
    """serve_config.yaml's controller env (HAProxy in front, replicas serving HTTP directly),
    with HAProxy's own stats and metrics ports moved off their fixed defaults."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    env = dict(config["controller_options"]["runtime_env"]["env_vars"])
    env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
    env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
    env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"  # not 30 s at teardown
    return env


def key_entries(*extra: tuple[str, str, str]) -> dict[str, Any]:
    """``api_key_hashes``: the module's keys, and ``extra`` (id, key, role)."""
    entries: dict[str, Any] = {
        "tester": {"hash": hash_api_key(KEY), "role": "operator"},
        "client": {"hash": hash_api_key(PREDICT_KEY), "role": "predict"},
        "limited": {"hash": hash_api_key(LIMITED_KEY), "rate_limit": LIMITED},
        "root": {"hash": hash_api_key(ADMIN_KEY), "role": "admin"},
    }
    for key_id, key, role in extra:
        entries[key_id] = {"hash": hash_api_key(key), "role": role}
    return entries


def write_keys(bao: Bao, entries: dict[str, Any]) -> None:
    """Replace the app's key hashes in Vault, as an operator's `bao kv put` would."""
    bao.write(SECRET_PATH, api_key_hashes=json.dumps(entries))


def ingress_token(bao: Bao) -> str:
    """The ingress's Vault token: it reads the app's secret and, for the admin API's key
    changes, patches it; nothing else."""
    allowed = '["read", "create", "update", "patch"]'
    policy = f'path "secret/data/{SECRET_PATH}" {{ capabilities = {allowed} }}'
    return bao.token("serve-app", policy)


def app_config(data_root: Path, bao: Bao) -> dict[str, Any]:
    """The application as serve_config.yaml would hold it, with the fake loader, and keys from
    Vault (OpenBao, the vault secrets backend), read every second."""
    write_keys(bao, key_entries())
    args = {
        "data_root": str(data_root),
        "variants": [
            {"name": name, "ref": name, "weight": 1.0 if name == "champion" else 0.0}
            for name in VARIANTS
        ],
        "loader": f"{__name__}:FakeRegistry",
        # Room for the 5000-request tests on a fast machine; the limit has its own key.
        "auth": {"mode": "keys", "rate_limit": {"requests": 1_000_000, "window_s": 1}},
        "max_tickers": 3,
        "max_body_bytes": 2048,
        "shadow_limits": {"max_in_flight": 2, "timeout_s": 1.0},
        "num_cpus": {"ingress": 0.2, "variant": 0.2},
        "precompute": False,  # the per-request path; the last test turns it on
        "prediction_log": {"flush_s": 1.0},
        "live_metrics_poll_s": 1.0,
    }
    return {
        "name": "ray-app",
        "route_prefix": "/",
        "import_path": "ray_app.serving.app:build_app",
        "runtime_env": {
            "env_vars": {
                "RAY_APP_SECRETS__BACKEND": "vault",
                "RAY_APP_SECRETS__VAULT__ADDRESS": bao.address,
                "RAY_APP_SECRETS__VAULT__PATH": SECRET_PATH,
                "RAY_APP_SECRETS__REFRESH_S": "1",
                "VAULT_TOKEN": ingress_token(bao),  # on a cluster: a Vault Agent's token file
            }
        },
        "logging_config": {"encoding": "JSON", "enable_access_log": False},
        "args": args,
        "deployments": [
            {
                "name": "Ingress",
                "num_replicas": INGRESS_REPLICAS,
                "user_config": {"weights": weights({"champion": 1.0})},
            }
        ],
    }


def weights(given: dict[str, float]) -> dict[str, float]:
    return {name: given.get(name, 0.0) for name in VARIANTS}


def apply(config: dict[str, Any]) -> None:
    """Deploy ``config`` as `serve deploy` does: through the controller's apply_config."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    client = serve.context._get_global_client()
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": [config]}), _blocking=True)


def with_ingress(config: dict[str, Any], **user_config: Any) -> dict[str, Any]:
    out = copy.deepcopy(config)
    out["deployments"][0]["user_config"].update(user_config)
    return out


def with_model(config: dict[str, Any], variant: str, ref: str) -> dict[str, Any]:
    out = copy.deepcopy(config)
    out["deployments"].append({"name": variant, "user_config": {"ref": ref}})
    return out


@pytest.fixture(scope="module")
def data_root(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve") / "data"
    settings = Settings(data_root=str(root), ingest={"source": "sample", "tickers": TICKERS})
    run_ingest(settings)
    build_features(settings)
    return root


@pytest.fixture(scope="module")
def table(data_root: Path) -> FeatureTable:
    return FeatureTable.load(Settings(data_root=str(data_root)))


@pytest.fixture(scope="module")
def deployed(data_root: Path, bao: Bao) -> Iterator[tuple[str, dict[str, Any], str]]:
    """Serve's URL, the app's config and HAProxy's stats page."""
    from ray import serve

    port, env = free_port(), fast_serve_env()
    serve.start(
        http_options={"host": "127.0.0.1", "port": port},
        controller_options={"runtime_env": {"env_vars": env}},
    )
    config = app_config(data_root, bao)
    apply(config)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{url}/readyz", timeout=5).status_code == 200, 60)
    yield url, config, f"http://127.0.0.1:{env['RAY_SERVE_HAPROXY_STATS_PORT']}/stats"
    serve.shutdown()


@pytest.fixture(scope="module")
def url(deployed: tuple[str, dict[str, Any], str]) -> str:
    return deployed[0]


@pytest.fixture(scope="module")
def config(deployed: tuple[str, dict[str, Any], str]) -> dict[str, Any]:
    return deployed[1]


@pytest.fixture(scope="module")
def haproxy_stats(deployed: tuple[str, dict[str, Any], str]) -> str:
    return deployed[2]


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {KEY}"
        yield s


def wait_until(check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s")
        time.sleep(0.25)


def predict(
    session: requests.Session, url: str, headers: dict[str, str] | None = None, **body: Any
) -> requests.Response:
    return session.post(f"{url}/v1/predict", json=body, headers=headers, timeout=30)


def without_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "request_id"}


def test_predictions_carry_the_model_and_the_request(
    url: str, session: requests.Session, table: FeatureTable
) -> None:
    response = predict(session, url, tickers=["aapl", "MSFT"], as_of="2012-03-02")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["variant"], body["model_name"], body["model_version"]) == ("champion", "tiny", 1)
    headers = response.headers
    assert headers["X-Model-Variant"] == "champion" and headers["X-Model-Version"] == "1"
    assert headers["X-Request-ID"] == body["request_id"]
    model = ServedModel("tiny", 1, tiny_model(table, 1))
    for pred in body["predictions"]:
        window = table.window(pred["ticker"], dt.date(2012, 3, 2), 1)
        expected = float(model.predict(window.rows[None])[0])
        assert pred["predicted_return"] == pytest.approx(expected, rel=1e-6)
        assert pred["feature_date"] == "2012-03-02"
        assert pred["score"] == pytest.approx(expected / window.volatility)
        assert pred["direction"] == ("up" if expected > 0 else "down")
    chosen = predict(session, url, tickers=["IBM"]).headers
    assert chosen["X-Request-ID"]
    mine = session.post(
        f"{url}/v1/predict", json={"tickers": ["IBM"]}, headers={"X-Request-ID": "mine-1"}
    )
    assert mine.json()["request_id"] == "mine-1" and mine.headers["X-Request-ID"] == "mine-1"
    for bad in ("has space", "x" * 65, "<script>", "a/b", "id;drop"):  # replaced, never echoed
        answer = session.post(
            f"{url}/v1/predict", json={"tickers": ["IBM"]}, headers={"X-Request-ID": bad}
        )
        made = answer.json()["request_id"]
        assert made != bad and VALID_REQUEST_ID.fullmatch(made), made
        assert answer.headers["X-Request-ID"] == made


def test_models_health_and_readiness(url: str, session: requests.Session) -> None:
    models = session.get(f"{url}/v1/models", timeout=10).json()
    variants = {v["name"]: v for v in models["variants"]}
    assert set(variants) == set(VARIANTS) and models["primary"] == "champion"
    assert variants["champion"]["weight"] == 1.0 and variants["champion"]["model_version"] == 1
    assert variants["challenger"]["ready"] and variants["challenger"]["model_version"] == 2
    assert models["shadow"] is None and models["feature_dates"][0] == "2000-05-25"
    assert requests.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{url}/readyz", timeout=5).json() == {"ready": True, "reasons": []}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_v1_needs_a_key_and_probes_do_not(url: str) -> None:
    for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {KEY}"}, bearer(KEY[:-1])):
        refused = requests.post(
            f"{url}/v1/predict", json={"tickers": ["AAPL"]}, headers=headers, timeout=10
        )
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert refused.json() == {"detail": "missing or invalid API key"}
    assert requests.get(f"{url}/v1/models", timeout=10).status_code == 401
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{url}/openapi.json", timeout=10).status_code == 200


def test_a_key_may_call_what_its_role_allows(url: str) -> None:
    """predict: /v1/predict only (403 naming the role elsewhere); operator: also the views."""
    body = {"tickers": ["AAPL"]}
    ok = requests.post(f"{url}/v1/predict", json=body, headers=bearer(PREDICT_KEY), timeout=10)
    assert ok.status_code == 200
    for path in ("/v1/models", "/v1/monitoring"):
        refused = requests.get(f"{url}{path}", headers=bearer(PREDICT_KEY), timeout=10)
        assert refused.status_code == 403
        assert refused.json()["detail"] == ("API key client has role predict; this needs operator")
        assert requests.get(f"{url}{path}", headers=bearer(KEY), timeout=10).status_code == 200
    models = requests.get(f"{url}/v1/models", headers=bearer(KEY), timeout=10).json()
    assert models["auth"] == "keys"


def replica_urls() -> list[str]:
    """The address of each running Ingress replica (its direct ingress, where HAProxy sends
    requests), so that a test can ask one replica instead of whichever HAProxy picks. Each
    listens on http_options.host (127.0.0.1) of the session's one node, as HAProxy reaches it."""
    import ray
    from ray import serve

    controller = serve.context._get_global_client()._controller
    groups = ray.get(controller.get_target_groups.remote("ray-app", True))
    http = [group for group in groups if group.protocol == "HTTP"]
    return [f"http://127.0.0.1:{target.port}" for group in http for target in group.targets]


# Between two syncs a replica may admit a request the other admitted but it has not learned of
# yet (see ray_app.serving.auth); requests 70 ms apart, alternating, give each replica one
# request every 140 ms, about the 2 x 50 ms it takes for one replica's count to reach the other.
SYNC_SLACK = INGRESS_REPLICAS


def test_a_key_over_its_limit_gets_429_with_retry_after(url: str) -> None:
    """The limit holds across the ingress replicas: 12 requests in each of three one-second
    windows, sent to each replica in turn at its own address, are admitted at most 5 per
    window (plus the sync's slack), where a limit per replica would admit 10."""
    replicas, body = replica_urls(), {"tickers": ["AAPL"]}
    assert len(replicas) == INGRESS_REPLICAS, replicas
    got: dict[int, list[requests.Response]] = {}
    with requests.Session() as s:
        s.headers.update(bearer(LIMITED_KEY))
        for window in range(int(time.time()) + 1, int(time.time()) + 4):
            for i in range(12):
                time.sleep(max(0.0, window + 0.02 + 0.07 * i - time.time()))
                answer = s.post(f"{replicas[i % len(replicas)]}/v1/predict", json=body)
                got.setdefault(window, []).append(answer)
    admitted = {w: [r.status_code for r in answers].count(200) for w, answers in got.items()}
    print(f"admitted per window, of 12 over {len(replicas)} replicas: {list(admitted.values())}")
    assert all(LIMITED <= n <= LIMITED + SYNC_SLACK for n in admitted.values()), admitted
    assert {r.status_code for answers in got.values() for r in answers} == {200, 429}
    refused = next(r for answers in got.values() for r in answers if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1"  # the rest of a one-second window, rounded up
    assert "API key limited is over its limit of 5 requests per 1 s" in refused.json()["detail"]
    time.sleep(1.0)
    answer = requests.post(f"{url}/v1/predict", json=body, headers=bearer(LIMITED_KEY))
    assert answer.status_code == 200


def test_a_key_rotated_in_vault_works_within_a_second_of_refresh_and_the_old_one_stops(
    url: str, bao: Bao
) -> None:
    """Keys rotated in Vault while serving: within refresh_s (1 s) plus the ingress's
    one-second reload, on every replica, the new key works and the removed one gets 401."""
    old = new_api_key()
    write_keys(bao, key_entries(("old", old, "predict")))
    body = {"tickers": ["AAPL"]}

    def status(key: str) -> int:
        answer = requests.post(f"{url}/v1/predict", json=body, headers=bearer(key), timeout=10)
        return answer.status_code

    def rotated_everywhere() -> bool:
        return all(status(ROTATED_KEY) == 200 and status(old) == 401 for _ in range(10))

    wait_until(lambda: all(status(old) == 200 for _ in range(10)), 10)
    write_keys(bao, key_entries(("new", ROTATED_KEY, "predict")))
    rotated = time.monotonic()
    wait_until(rotated_everywhere, 10)
    took = time.monotonic() - rotated
    assert took <= 1.0 + 1.0 + 1.0, took  # refresh_s + reload period + one poll of slack
    print(f"rotation seen on every replica after {took:.2f} s")
    write_keys(bao, key_entries())


def test_an_admin_key_adds_and_revokes_keys_over_http_and_each_change_is_audited(
    url: str, data_root: Path, bao: Bao
) -> None:
    """POST/DELETE /v1/admin/keys change the keys in Vault as `ray-app keys` does: the new key
    works on every replica within refresh_s plus the reload, the revoked one stops, and each
    change is in the audit trail with the calling key's id as the actor."""
    from ray_app.registry.audit import audit_log, verify

    admin, keys_url = bearer(ADMIN_KEY), f"{url}/v1/admin/keys"
    refused = requests.get(keys_url, headers=bearer(KEY), timeout=10)
    assert refused.status_code == 403 and refused.json()["detail"].endswith("this needs admin")
    listed = requests.get(keys_url, headers=admin, timeout=10)
    assert listed.status_code == 200 and "hash" not in listed.text
    assert {k["id"]: k["role"] for k in listed.json()["keys"]}["root"] == "admin"

    made = requests.post(
        keys_url, json={"id": "desk", "role": "operator"}, headers=admin, timeout=10
    )
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert made.json() == {"id": "desk", "role": "operator", "rate_limit": None, "key": key}

    def status(with_key: str) -> int:
        return requests.get(f"{url}/v1/models", headers=bearer(with_key), timeout=10).status_code

    start = time.monotonic()
    wait_until(lambda: all(status(key) == 200 for _ in range(10)), 10)
    added_s = time.monotonic() - start
    for body, code, reason in [
        ({"id": "desk"}, 409, "key id desk exists"),
        ({"id": "a/b"}, 422, "string_pattern_mismatch"),
        ({"id": "x", "role": "root"}, 422, "literal_error"),
        ({"id": "x", "rate_limit": 0}, 422, "greater_than_equal"),
    ]:
        answer = requests.post(keys_url, json=body, headers=admin, timeout=10)
        assert answer.status_code == code and reason in answer.text, answer.text
    unknown = requests.delete(f"{keys_url}/nobody", headers=admin, timeout=10)
    assert unknown.status_code == 404 and "no key 'nobody'" in unknown.json()["detail"]

    assert requests.delete(f"{keys_url}/desk", headers=admin, timeout=10).status_code == 204
    start = time.monotonic()
    wait_until(lambda: all(status(key) == 401 for _ in range(10)), 10)
    revoked_s = time.monotonic() - start
    assert max(added_s, revoked_s) <= 1.0 + 1.0 + 1.0, (added_s, revoked_s)
    print(f"admin API: key usable after {added_s:.2f} s, refused after {revoked_s:.2f} s")

    settings = Settings(data_root=str(data_root))
    changes = [e for e in audit_log(settings) if e["event"].startswith("api_key")]
    assert [(e["event"], e["key_id"], e["actor"]) for e in changes] == [
        ("api_key_added", "desk", "api-key:root"),
        ("api_key_revoked", "desk", "api-key:root"),
    ]
    assert verify(settings).intact and key not in json.dumps(changes)


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"tickers": ["AAPL", "NOPE"]}, 404, "unknown ticker(s) NOPE"),
        ({"tickers": []}, 422, "at least 1"),
        ({"tickers": ["AAPL", "GOOG", "IBM", "MSFT"]}, 422, "at most 3"),
        ({"tickers": ["AAPL"], "colour": "red"}, 422, "Extra inputs"),
        ({"tickers": "AAPL"}, 422, "valid list"),
        ({"tickers": [7]}, 422, "valid string"),
        ({"tickers": ["AAPL"], "as_of": 1330646400}, 422, "YYYY-MM-DD"),
        ({"tickers": ["AAPL"], "as_of": "2999-01-01"}, 422, "in the future"),
        ({"tickers": ["AAPL"], "as_of": "1999-01-01"}, 422, "before the data"),
        ({"tickers": ["GOOG"], "as_of": "2001-01-02"}, 422, "GOOG: the model needs a feature row"),
    ],
)
def test_bad_input_gets_a_4xx_with_its_reason(
    url: str, session: requests.Session, body: dict[str, Any], status: int, reason: str
) -> None:
    response = predict(session, url, **body)
    assert response.status_code == status, response.text
    assert reason in json.dumps(response.json()["detail"])


def test_malformed_and_oversized_bodies(url: str, session: requests.Session) -> None:
    post = f"{url}/v1/predict"
    broken = session.post(post, data=b'{"tickers": [', headers={"Content-Type": "application/json"})
    assert broken.status_code == 422 and "JSON" in broken.text
    big = session.post(post, json={"tickers": ["AAPL"], "pad": "x" * 4000})
    assert big.status_code == 413 and "2048 bytes" in big.json()["detail"]
    chunked = session.post(post, data=iter([b'{"tickers": ["AAPL"], "pad": "', b"x" * 4000, b'"}']))
    assert chunked.status_code == 413
    assert session.get(post).status_code == 405


def send_many(url: str, bodies: list[dict[str, Any]], headers: list[dict[str, str]]) -> list[Any]:
    """Send requests from 8 threads; each answer as (status, body, latency)."""
    local = threading.local()

    def one(i: int) -> tuple[int, Any, float]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["Authorization"] = f"Bearer {KEY}"
        start = time.perf_counter()
        response = local.session.post(f"{url}/v1/predict", json=bodies[i], headers=headers[i])
        return response.status_code, response.json(), time.perf_counter() - start

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(len(bodies))))


def test_a_sticky_90_10_split_over_5000_requests(url: str, config: dict[str, Any]) -> None:
    apply(with_ingress(config, weights=weights({"champion": 0.9, "challenger": 0.1})))
    n = 5000
    bodies = [{"tickers": [TICKERS[i % 4]]} for i in range(n)]
    answers = send_many(url, bodies, [{"X-Client-Id": f"client-{i}"} for i in range(n)])
    assert {status for status, _, _ in answers} == {200}
    variants = [body["variant"] for _, body, _ in answers]
    low, high = binom.interval(0.999, n, 0.1)
    assert low <= variants.count("challenger") <= high
    again = send_many(url, bodies[:200], [{"X-Client-Id": f"client-{i}"} for i in range(200)])
    assert [body["variant"] for _, body, _ in again] == variants[:200]
    apply(config)


def baseline_bodies() -> list[dict[str, Any]]:
    days = ["2012-02-01", "2012-02-15", "2012-03-01", None]
    return [
        {"tickers": [TICKERS[i % 4], TICKERS[(i + 1) % 4]], **({"as_of": d} if d else {})}
        for i, d in enumerate(days * 10)
    ]


def run_round(url: str) -> tuple[list[Any], list[float]]:
    bodies = baseline_bodies()
    answers = send_many(url, bodies, [{} for _ in bodies])
    return [(status, without_id(body)) for status, body, _ in answers], [a[2] for a in answers]


def approx(value: Any) -> Any:
    """``value`` with every float compared to 1e-6: the variants' float32 networks round the
    last bits differently in a batch of the whole table than in a batch of one request."""
    if isinstance(value, float):
        return pytest.approx(value, rel=1e-6)
    if isinstance(value, dict):
        return {k: approx(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(approx(v) for v in value)
    return value


def models(url: str) -> dict[str, Any]:
    answer = requests.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    return answer.json()  # type: ignore[no-any-return]


def replicas_up(stats: str) -> int:
    """How many Ingress replicas HAProxy sends requests to now (UP on its stats page): one
    that Serve just started or reconfigured is UP after two health checks."""
    text = requests.get(f"{stats};csv", timeout=5).text.removeprefix("# ")
    return sum(
        row["pxname"] == "http-ray-app"
        and row["svname"].startswith("SERVE_REPLICA")
        and row["status"] == "UP"
        for row in csv.DictReader(io.StringIO(text))
    )


def every_replica_models() -> list[dict[str, Any]]:
    """``/v1/models`` of each Ingress replica: what one replica holds (its tables, its shadow
    counts) is its own, and HAProxy answers from either."""
    return [models(replica) for replica in replica_urls()]


def serves_precomputed(variant: str) -> bool:
    """Whether, on every Ingress replica, ``variant`` takes all the traffic and every variant
    answers from its table."""

    def ready(found: list[dict[str, Any]]) -> bool:
        weight = found[VARIANTS.index(variant)]["weight"]
        return weight == 1 and all(v["precomputed"] for v in found)

    return all(ready(m["variants"]) for m in every_replica_models())


def shadow_counts() -> dict[str, int]:
    """The shadow's counts, summed over the Ingress replicas (each counts its own mirrors)."""
    shadows = [m["shadow"] for m in every_replica_models()]
    return {k: sum(s[k] for s in shadows) for k, v in shadows[0].items() if isinstance(v, int)}


def model_version(variant: str) -> int | None:
    """The version of ``variant`` every Ingress replica reports; None while they differ."""
    found = {
        next(v["model_version"] for v in m["variants"] if v["name"] == variant)
        for m in every_replica_models()
    }
    return found.pop() if len(found) == 1 else None


@pytest.mark.parametrize("model", ["raising", "sleepy"])
def test_a_failing_or_slow_shadow_changes_nothing(
    url: str, config: dict[str, Any], model: str
) -> None:
    expected, plain_latency = run_round(url)
    shadowed = with_model(config, "challenger", model)
    apply(with_ingress(shadowed, shadow={"variant": "challenger", "fraction": 1.0}))
    wait_until(lambda: model_version("challenger") == VERSIONS[model], 10)
    got, latency = run_round(url)
    counts = shadow_counts()
    apply(config)
    assert got == expected  # same statuses, same bodies: 0 extra errors
    assert statistics.median(latency) < statistics.median(plain_latency) + 0.05
    assert max(latency) < 2.0  # the sleepy shadow takes 5 s per call
    if model == "raising":
        assert counts["error"] > 0 and counts["ok"] == 0
    else:
        assert counts["dropped"] > 0 and counts["sent"] <= counts["dropped"]


def test_overload_gets_a_quick_503_with_retry_after_not_a_growing_queue(
    url: str, config: dict[str, Any], table: FeatureTable, haproxy_stats: str
) -> None:
    """Past max_ongoing_requests an ingress replica queues at most max_queued_requests and
    refuses the rest at once (503, Retry-After from serve_config.yaml's backpressure_config).
    Here both are small and the model is stuck for 5 s, so 24 requests at once through HAProxy
    overflow both replicas: more are admitted than one replica holds (both took their share)
    and no more than both hold; the refused ones come back within a second, the admitted ones
    answer."""
    limits = {"max_ongoing_requests": 2, "max_queued_requests": 1}
    stuck = with_model(config, "champion", "sleepy")
    stuck["deployments"][0].update(
        limits, backpressure_config=SHIPPED_INGRESS["backpressure_config"]
    )
    apply(stuck)
    wait_until(lambda: model_version("champion") == VERSIONS["sleepy"], 20)
    wait_until(lambda: replicas_up(haproxy_stats) == INGRESS_REPLICAS, 20)
    aapl_days = table.frames["AAPL"][0][-24:]  # no two requests share a cache entry
    days = [str(day) for day in aapl_days]

    def one(day: str) -> tuple[int, str | None, float]:
        start = time.perf_counter()
        answer = requests.post(
            f"{url}/v1/predict", json={"tickers": ["AAPL"], "as_of": day}, headers=bearer(KEY)
        )
        return answer.status_code, answer.headers.get("Retry-After"), time.perf_counter() - start

    try:
        with ThreadPoolExecutor(len(days)) as pool:
            answers = list(pool.map(one, days))
    finally:
        apply(config)
    refused = [a for a in answers if a[0] == 503]
    admitted = len(answers) - len(refused)
    assert {a[0] for a in answers} == {200, 503}, answers
    held = sum(limits.values())  # by one replica: 2 answering + 1 queued
    assert held < admitted <= INGRESS_REPLICAS * held, answers
    assert all(retry == "1" and took < 1.0 for _, retry, took in refused), refused
    print(
        f"overload: {len(refused)} of {len(answers)} refused, slowest refusal "
        f"{max(a[2] for a in refused):.2f} s"
    )
    wait_until(lambda: model_version("champion") == VERSIONS["champion"], 20)


def test_a_killed_shadow_replica_changes_nothing(url: str, config: dict[str, Any]) -> None:
    import ray

    expected, _ = run_round(url)
    apply(with_ingress(config, shadow={"variant": "challenger", "fraction": 1.0}))
    names = [
        a for a in ray.util.list_named_actors(all_namespaces=True) if "#challenger#" in a["name"]
    ]
    assert len(names) == 1
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)
    got, _ = run_round(url)
    counts = shadow_counts()
    apply(config)
    assert got == expected
    assert counts["sent"] > 0 and counts["error"] + counts["timeout"] + counts["dropped"] > 0
    wait_until(lambda: models(url)["variants"][1]["ready"], 60)  # Serve replaced the replica


def test_rollouts_under_load_fail_no_request(url: str, config: dict[str, Any]) -> None:
    """A client sends requests throughout weight, shadow and model version changes."""
    stop, outcomes = threading.Event(), []

    def client() -> None:
        with requests.Session() as s:
            s.headers["Authorization"] = f"Bearer {KEY}"
            i = 0
            while not stop.is_set():
                r = s.post(f"{url}/v1/predict", json={"tickers": [TICKERS[i % 4]]}, timeout=30)
                body = r.json()
                outcomes.append((r.status_code, body.get("variant"), body.get("model_version")))
                i += 1

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        steps = [
            with_ingress(config, weights=weights({"champion": 0.5, "challenger": 0.5})),
            with_ingress(config, shadow={"variant": "challenger", "fraction": 0.5}),
        ]
        for step in [*steps, with_model(config, "champion", "2")]:
            apply(step)
            time.sleep(1)
        wait_until(lambda: outcomes[-1][1:] == ("champion", 2), 20)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    statuses = [status for status, _, _ in outcomes]
    assert len(statuses) > 50 and set(statuses) == {200}
    served = [(variant, version) for _, variant, version in outcomes]
    assert served[0] == ("champion", 1) and served[-1] == ("champion", 2)
    assert set(served) == {("champion", 1), ("challenger", 2), ("champion", 2)}
    apply(config)


def fuzz(url: str, operation: Any, mode: Any, session: requests.Session) -> list[int]:
    """The statuses of up to 30 generated requests to one operation."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    statuses: list[int] = []

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode))
    def check(case: Any) -> None:
        with suppress(requests.exceptions.InvalidHeader, UnicodeEncodeError):  # unsendable
            statuses.append(case.call(base_url=url, session=session, timeout=30).status_code)

    with suppress(Unsatisfiable):  # nothing invalid to generate: no parameters, no body
        check()
    return statuses


def test_fuzzing_the_openapi_schema_finds_no_server_error(url: str) -> None:
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    seen: dict[str, list[int]] = {}
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {KEY}"
        for found in schema.get_all_operations():
            operation = found.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                seen[f"{operation.label} {mode.value}"] = fuzz(url, operation, mode, session)
    assert len(seen["POST /v1/predict negative"]) >= 20
    assert {404, 422} <= set(seen["POST /v1/predict positive"] + seen["POST /v1/predict negative"])
    errors = {label: s for label, s in seen.items() if any(code >= 500 for code in s)}
    assert not errors


def test_metrics_are_exported_for_prometheus(url: str, session: requests.Session) -> None:
    import ray

    for ticker in TICKERS:
        predict(session, url, tickers=[ticker])
    port = ray._private.worker._global_node.metrics_export_port
    wanted = ["ray_app_serve_requests_total", "ray_app_serve_latency_ms_bucket"]
    wanted += ["ray_app_serve_cache_lookups_total", "ray_app_serve_model_info"]
    wanted += ["ray_app_data_latest_bar_timestamp_seconds"]  # the data staleness alert's

    def exported() -> bool:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return all(name in text for name in wanted)

    wait_until(exported, 30)


def test_request_logs_are_json_lines_without_secrets(url: str, session: requests.Session) -> None:
    import ray

    marked = {"X-Request-ID": "log-me", "X-Client-Id": "alice"}
    assert predict(session, url, tickers=["AAPL"], headers=marked).status_code == 200
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"

    def line() -> dict[str, Any] | None:
        """The marked request's line, once written: replicas write request logs in batches."""
        for _ in range(100):
            session.post(f"{url}/v1/predict", json={"tickers": ["AAPL"]})
        for path in logs.glob("replica_ray-app_Ingress_*.log"):
            for text in path.read_text().splitlines():
                if '"trace.id": "log-me"' in text and '"event.dataset": "ray_app.access"' in text:
                    return json.loads(text)  # type: ignore[no-any-return]
        return None

    wait_until(lambda: line() is not None, 30)
    record = line()
    assert record is not None
    assert (
        record["ray_app.client_key"],
        record["http.response.status_code"],
        record["ray_app.variant"],
    ) == ("alice", 200, "champion")
    assert record["ray_app.model.name"] == "tiny" and record["event.duration"] > 0
    assert record["ray_app.api_key_id"] == "tester"
    text = "\n".join(p.read_text() for p in logs.glob("replica_ray-app_*.log"))
    assert KEY not in text and "Bearer" not in text


def test_precomputed_predictions_equal_the_per_request_ones(
    url: str, config: dict[str, Any]
) -> None:
    """The ingress answers from each variant's precomputed table (args change: new replicas),
    exactly as the variants answered one request at a time, and compares the shadow without
    calling it, on the request's own log line."""
    import ray

    expected, _ = run_round(url)
    precomputing = copy.deepcopy(config)
    precomputing["args"]["precompute"] = True
    apply(with_ingress(precomputing, shadow={"variant": "challenger", "fraction": 1.0}))
    wait_until(
        lambda: all(v["precomputed"] for m in every_replica_models() for v in m["variants"]), 60
    )
    got, _ = run_round(url)
    assert got == approx(expected)
    counts = shadow_counts()
    assert counts["precomputed"] == len(expected) and counts["sent"] == 0
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"

    def compared_on_the_request_line() -> bool:
        run_round(url)  # replicas write request logs in batches
        for path in logs.glob("replica_ray-app_Ingress_*.log"):
            for text in path.read_text().splitlines():
                if (
                    '"event.dataset": "ray_app.access"' in text
                    and '"shadow_variant": "challenger"' in text
                ):
                    return True
        return False

    wait_until(compared_on_the_request_line, 30)


def raw_returns(root: Path, ticker: str) -> pd.Series:
    """The next-day log return of ``ticker`` per date, straight from its raw bars."""
    bars = read_bars(DataRoot(str(root)), ticker)
    close = bars["adj_close"].to_numpy()
    nxt = np.append(close[1:], np.nan)
    return pd.Series(np.log(nxt / close), index=pd.to_datetime(bars["date"]).dt.date)


def test_the_log_signals_and_monitor_close_the_loop(
    url: str,
    config: dict[str, Any],
    data_root: Path,
    table: FeatureTable,
    ray_address: str,
    tmp_path: Path,
) -> None:
    """With the variants precomputing (the test before turned it on): every answer, the
    shadow's too, lands in the prediction log; `ray-app signals` equals /v1/predict with
    as_of for each variant; `ray-app monitor` scores the logged days exactly as the raw bars
    say, leaves the newest day pending, and the ingress exports the live gauges."""
    import ray

    days = [table.last_date - dt.timedelta(days=k) for k in (40, 33, 26, 19, 12)]
    days.append(table.last_date)  # no next bar yet: pending
    answers: dict[str, dict[tuple[str, dt.date], Any]] = {}
    ids = []
    base = copy.deepcopy(config)
    base["args"]["precompute"] = True
    for variant in ("challenger", "champion"):  # the champion last: it keeps the traffic
        apply(
            with_ingress(
                base,
                weights=weights({variant: 1.0}),
                shadow={"variant": "challenger", "fraction": 1.0},
            )
        )
        wait_until(lambda v=variant: serves_precomputed(v), 30)
        for day in days:
            for tickers in (TICKERS[:2], TICKERS[2:]):
                answer = requests.post(
                    f"{url}/v1/predict",
                    json={"tickers": tickers, "as_of": str(day)},
                    headers={"Authorization": f"Bearer {KEY}", "X-Client-Id": "quant-7"},
                    timeout=30,
                ).json()
                ids.append(answer["request_id"])
                for p in answer["predictions"]:
                    answers.setdefault(answer["variant"], {})[(p["ticker"], day)] = p

    # the signals table equals what the API answered, for both variants
    out = tmp_path / "signals.csv"
    for day in days[:3]:
        done = run_cli(
            ["signals", "--date", str(day), "--data-root", str(data_root), "--out", str(out)],
            ray_address,
            tmp_path,
        )
        assert done.returncode == 0, done.stderr
        signals = pd.read_csv(out)
        assert set(signals["variant"]) == {"champion", "challenger"}
        for row in signals.to_dict("records"):
            api = answers[row["variant"]][(row["ticker"], day)]
            assert row["predicted_return"] == api["predicted_return"]
            assert row["feature_date"] == api["feature_date"]
        ranks = signals[signals["variant"] == "champion"].sort_values("rank")
        assert ranks["predicted_return"].is_monotonic_decreasing
    bad = run_cli(["signals", "--date", "yesterday"], ray_address, tmp_path)
    assert bad.returncode == 2 and "--date 'yesterday'" in bad.stderr

    # every answer in the prediction log, served and shadow, within a flush or two
    root = DataRoot(str(data_root))

    def logged() -> pd.DataFrame:
        frame = read_predictions(root)
        return frame[frame["request_id"].isin(ids)]

    wait_until(lambda: len(logged()) == len(ids) * 3, 30)  # 2 tickers; half mirrored
    frame = logged()
    assert tuple(frame.columns) == COLUMNS
    served = frame[frame["role"] == "served"]
    assert set(served["source"]) == {"precomputed"} and len(served) == len(ids) * 2
    assert "quant-7" not in set(frame["client"])
    shadow = frame[frame["role"] == "shadow"]  # mirrored while the champion answered
    assert set(shadow["variant"]) == {"challenger"} and len(shadow) == len(ids)
    answered = {
        (variant, p["ticker"], p["feature_date"]): p["predicted_return"]
        for variant, preds in answers.items()
        for p in preds.values()
    }
    for row in frame.to_dict("records"):
        key = (row["variant"], row["ticker"], str(row["feature_date"]))
        assert row["predicted_return"] == answered[key]

    # the monitor scores the logged days as the raw bars say
    done = run_cli(["monitor", "--data-root", str(data_root), "--no-mlflow"], ray_address, tmp_path)
    assert done.returncode == 0, done.stderr
    live = pd.read_parquet(data_root / "monitoring" / "live_metrics.parquet")
    returns = {t: raw_returns(data_root, t) for t in TICKERS}
    for day in days[:-1]:
        preds = {t: answers["champion"][(t, day)] for t in TICKERS}
        feature_date = dt.date.fromisoformat(preds[TICKERS[0]]["feature_date"])
        p = np.array([preds[t]["predicted_return"] for t in TICKERS])
        y = np.array([returns[t][dt.date.fromisoformat(preds[t]["feature_date"])] for t in TICKERS])
        row = live[
            (live["variant"] == "champion")
            & (live["model_version"] == "1")
            & (live["day"] == feature_date)
            & (live["window"] == "1d")
        ].iloc[0]
        assert not row["pending"] and row["n"] == len(TICKERS)
        assert row["directional_accuracy"] == pytest.approx(np.mean((y > 0) == (p > 0)))
        assert row["mae"] == pytest.approx(np.mean(np.abs(y - p)))
        assert row["rank_ic"] == pytest.approx(spearmanr(p, y)[0])
        assert row["ic"] == pytest.approx(np.corrcoef(p, y)[0, 1])
    newest = live[
        (live["day"] == table.last_date)
        & (live["variant"] == "champion")
        & (live["model_version"] == "1")  # tests before served the newest day with v2 too
    ]
    assert len(newest) == 1 and newest["pending"].all() and newest["rank_ic"].isna().all()

    # operators read the same figures over HTTP: the newest scored day, per window
    view = requests.get(f"{url}/v1/monitoring", headers=bearer(KEY), timeout=10).json()
    shown = {(q["variant"], q["window"]): q for q in view["live"]}
    scored = live[~live["pending"] & (live["variant"] == "champion") & (live["window"] == "1d")]
    last = scored.sort_values(["day", "model_version"]).iloc[-1]
    assert shown[("champion", "1d")]["metrics"]["rank_ic"] == pytest.approx(last["rank_ic"])
    assert shown[("champion", "1d")]["pending_days"] >= 1

    port = ray._private.worker._global_node.metrics_export_port
    wanted = ["ray_app_live_rank_ic", "ray_app_live_pending_days"]
    wanted += ["ray_app_prediction_log_written_total"]

    def exported() -> bool:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return all(name in text for name in wanted)

    wait_until(exported, 40)
