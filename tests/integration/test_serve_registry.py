"""Serving models from the MLflow registry with the shipped serve_config.yaml, and what it
survives under load.

Two tiny MLPs are fitted and registered (the second becomes the challenger); the application
is the repository's serve_config.yaml (2 ingress replicas behind HAProxy) pointed at this
module's data root, whose data stops a day short of the sample's last. It starts before any
champion exists, refuses a rollout while the champion alias does not resolve, is made ready by
a promotion plus a pinning rollout, and then, while 4 clients keep sending requests: goes
through a canary split with a shadow, a promotion and a rollback; loses a variant replica and
an ingress replica (``kill -9``); and serves the missing day once it is ingested, without a
deploy. Last, each model family goes from training to an HTTP answer. Every change goes through
``ray-app rollout``'s function, which reads what the cluster runs through Serve's REST API and
runs `serve deploy` against the session head's dashboard; the desired file is never rewritten.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import requests
import torch
import yaml

from ray_app.core.settings import Settings
from ray_app.core.storage import DataRoot
from ray_app.data.feature_store import build_features, load_feature_set
from ray_app.data.ingest import run_ingest
from ray_app.models.families import names
from ray_app.registry.tracking import connect_mlflow, tracking_uri
from ray_app.registry.versions import (
    champion_version,
    load_version,
    log_model,
    promote,
    register_challenger,
)
from ray_app.serving.rollout import (
    Change,
    RolloutError,
    auth_headers,
    deploy,
    rollout,
    running_config,
    serving_state,
)
from ray_app.training.release import release
from ray_app.training.train import TrainingData, fit_in_process, load_training_data
from tests.conftest import Head, local_auth, sample_feature_set
from tests.integration.load import Load, all_running, kill_replica, load, recovery_s
from tests.integration.test_serve_app import (
    SERVE_CONFIG,
    TICKERS,
    fast_serve_env,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.integration

DAY_BEFORE, LAST_DAY = dt.date(2013, 2, 28), "2013-03-01"  # the sample's last two days
FEATURES_POLL_S = 2.0
FOLLOW_BOUND_S = 20.0  # the poll, then reading the new set and precomputing it
REPLICAS = {"Ingress": 2, "champion": 1, "challenger": 1}  # the shipped serve_config.yaml
CHAOS_S = float(os.environ.get("CHAOS_SECONDS", "20"))
# The measurement is 60 s; a run may stop sooner once it has this many requests, the
# fewest with which the one request a killed ingress may be writing (HAProxy cannot replay an
# answer that has begun) stays within the 0.01% bound.
MIN_REQUESTS = 10_000
QUESTION = {"tickers": ["AAPL", "MSFT"], "as_of": "2012-06-01"}
# The shipped auth with room for the load tests: their clients, all on the one local key, send
# more than its 1000 requests/s on a fast machine, and a 429 would count as a lost request
# (test_serve_app tests the limit on a key of its own).
SHIPPED_AUTH = yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]["args"]["auth"]
LOAD_AUTH = {**SHIPPED_AUTH, "rate_limit": {**SHIPPED_AUTH["rate_limit"], "requests": 1_000_000}}


@pytest.fixture(scope="module")
def settings(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    torch.set_num_threads(1)
    return sample_feature_set(
        tmp_path_factory.mktemp("serve-registry") / "data",
        ingest={"source": "sample", "tickers": TICKERS, "end": DAY_BEFORE},
        split={"n_folds": 1, "test_days": 60, "holdout_months": 3},
        train={"hparams": {"epochs": 1, "hidden_size": 8}},
    )


@pytest.fixture(scope="module")
def data(settings: Settings) -> TrainingData:
    return load_training_data(settings)


def register(settings: Settings, data: TrainingData, seed: int) -> int:
    assert data.split.holdout is not None
    seeded = settings.model_copy(deep=True)
    seeded.train.seed = seed
    model = fit_in_process(data, seeded, data.split.holdout.train_mask, None)
    with mlflow.start_run(experiment_id=connect_mlflow(settings)) as run:
        uri = log_model(model, data.frame.tail(200))
    return register_challenger(settings, uri, run.info.run_id, {})


@pytest.fixture(scope="module")
def versions(settings: Settings, data: TrainingData) -> list[int]:
    return [register(settings, data, seed) for seed in (0, 1)]


def serve_config_for(settings: Settings, folder: Path, **args: Any) -> Path:
    """The repository's serve_config.yaml, written into ``folder``, on a free port (HAProxy's
    own ports too), reading the store of ``settings``; ``args`` go on top of the app's."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": free_port()}
    config["controller_options"]["runtime_env"]["env_vars"] = fast_serve_env()
    store = {"data_root": settings.data_root, "mlflow_tracking_uri": tracking_uri(settings)}
    config["applications"][0]["args"].update(store, **args)
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def http_url(config_path: Path) -> str:
    """Where the app of the Serve config at ``config_path`` answers."""
    return f"http://127.0.0.1:{yaml.safe_load(config_path.read_text())['http_options']['port']}"


@contextmanager
def serving(config_path: Path, head: Head) -> Iterator[str]:
    """`serve deploy` of ``config_path`` on the session's head (which starts Serve with the
    file's options), its URL, and Serve shut down after, so the next module starts its own."""
    from ray import serve

    deploy(config_path, head.dashboard)
    try:
        yield http_url(config_path)
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def config_path(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's serve_config.yaml on a free port, reading this module's store."""
    folder = tmp_path_factory.mktemp("serve-config")
    return serve_config_for(settings, folder, features_poll_s=FEATURES_POLL_S, auth=LOAD_AUTH)


@pytest.fixture(scope="module")
def url(versions: list[int], config_path: Path, ray_head: Head) -> Iterator[str]:
    with serving(config_path, ray_head) as url:
        yield url


def signed(head: Head) -> dict[str, str]:
    """How these tests sign their rollouts and where they send them."""
    return {"actor": "tester", "reason": "test", "address": head.dashboard}


def served(url: str) -> dict[str, Any]:
    variants = requests.get(f"{url}/v1/models", headers=local_auth(), timeout=10).json()["variants"]
    return {v["name"]: v["model_version"] for v in variants}


def test_without_a_champion_nothing_is_served_until_one_is_promoted(
    url: str,
    settings: Settings,
    versions: list[int],
    config_path: Path,
    data: TrainingData,
    ray_head: Head,
) -> None:
    wait_until(lambda: served(url)["challenger"] == versions[1], 90)

    def readiness() -> tuple[int, list[str]]:
        ready = requests.get(f"{url}/readyz", timeout=10)
        return ready.status_code, ready.json()["reasons"]

    wait_until(lambda: readiness() == (503, ["no_model:champion"]), 30)  # each replica asks
    refused = requests.post(
        f"{url}/v1/predict", json={"tickers": ["AAPL"]}, headers=local_auth(), timeout=10
    )
    assert refused.status_code == 503 and "no model to serve" in refused.json()["detail"]

    desired = config_path.read_text()
    with pytest.raises(RolloutError) as no_champion:  # the reproduction: nothing moves
        rollout(settings, config_path, Change(challenger_weight=0.2), **signed(ray_head))
    assert "variant 'champion': model reference 'champion' does not resolve" in str(
        no_champion.value
    )
    promote(settings, versions[0], "tester", "first champion")
    pin = Change(pins={"champion": str(versions[0])})
    result = rollout(settings, config_path, pin, **signed(ray_head))
    assert result.deployed and result.source == "cluster"
    assert {n: v.ref for n, v in result.state.variants.items()} == {
        "champion": str(versions[0]),
        "challenger": "challenger",  # not asked: left as it runs
    }
    assert config_path.read_text() == desired  # the desired config is never rewritten
    wait_until(lambda: ready_everywhere(url), 60)

    expected = offline(settings, data, versions[0])
    answer = requests.post(f"{url}/v1/predict", json=QUESTION, headers=local_auth(), timeout=10)
    assert answered(answer.json()) == ("champion", versions[0], expected)


def offline(settings: Settings, data: TrainingData, version: int) -> object:
    """What ``version`` of the registry predicts for each of QUESTION's tickers on its day,
    loaded and run in this process (to float32's precision): what a served answer must be."""
    rows = data.frame[data.frame["date"] == pd.Timestamp(QUESTION["as_of"])]
    predicted = load_version(settings, version).predict_frame(rows).set_index("ticker")["pred"]
    return pytest.approx({t: float(predicted[t]) for t in QUESTION["tickers"]}, rel=1e-5)


def answered(body: dict[str, Any]) -> tuple[str, int, dict[str, float]]:
    """Who answered a prediction (variant, model version) and what it predicted per ticker."""
    predicted = {p["ticker"]: p["predicted_return"] for p in body["predictions"]}
    return body["variant"], body["model_version"], predicted


def ready_everywhere(url: str) -> bool:
    """Whether both ingress replicas behind HAProxy say ready: ten probes in a row (each
    replica learns of the first champion on its own, within about a second)."""
    return all(requests.get(f"{url}/readyz", timeout=10).status_code == 200 for _ in range(10))


def history(i: int) -> dict[str, Any]:
    """Request ``i`` of a client: one ticker on a day of 2012."""
    return {"tickers": [TICKERS[i % 4]], "as_of": f"2012-0{1 + i % 9}-15"}


def report(name: str, got: Load, **figures: float) -> None:
    """The counts and figures of a run under load, and why the first lost requests were."""
    extra = ", ".join(f"{k} {v:.1f}" for k, v in figures.items())
    print(f"\n{name}: {got.counts()}{', ' if extra else ''}{extra}")
    for lost in got.lost[:5]:
        print(f"  lost: {lost.status} {lost.error}")


def test_rollouts_under_load_lose_no_request(
    url: str, settings: Settings, versions: list[int], config_path: Path, ray_head: Head
) -> None:
    """A canary split with a shadow, a promotion and a rollback, one after another while 4
    clients send requests as fast as they go."""
    steps = [
        Change(challenger_weight=0.1, shadow="challenger", shadow_fraction=0.5),
        Change(promote=True),
        Change(rollback=True),
    ]
    champions = []
    with load(url, history, headers=local_auth()) as got:
        for step in steps:
            rollout(settings, config_path, step, **signed(ray_head))
            wanted = champion_version(settings)
            wait_until(lambda: served(url)["champion"] == wanted, 60)  # noqa: B023
            champions.append(wanted)
            time.sleep(1)
    report("rollouts under load", got)
    assert champions == [versions[0], versions[1], versions[0]]
    assert len(got.answers) > 50 and got.lost == []
    assert {a.version for a in got.answers} == set(versions)
    running = running_config(ray_head.dashboard, auth_headers(settings))
    assert running is not None
    assert serving_state(running).ingress.weights == {"champion": 1.0, "challenger": 0.0}


@pytest.mark.parametrize("deployment", ["champion", "Ingress"])
def test_a_replica_killed_under_load_loses_nothing_and_is_replaced_within_10s(
    url: str, ray_head: Head, deployment: str
) -> None:
    """``kill -9`` of one replica while 4 clients send requests as fast as they go: at most
    0.01% of requests lost (non-2xx, connection error or 10 s timeout), every replica RUNNING
    again within 10 s. ``CHAOS_SECONDS=60`` makes it the issue's one-minute measurement."""
    wait_until(lambda: all_running(REPLICAS), 60)
    with load(url, history, headers=local_auth()) as got:
        start = time.monotonic()
        time.sleep(CHAOS_S / 3)
        killed, killed_at = kill_replica(ray_head.dashboard, deployment)
        recovered = recovery_s(ray_head.dashboard, REPLICAS, killed, killed_at)
        time.sleep(max(CHAOS_S - (time.monotonic() - start), 3.0))
        while len(got.answers) < MIN_REQUESTS and time.monotonic() - start < 60:
            time.sleep(0.5)
        end = time.monotonic()
    back = killed_at + recovered
    rates = {"before/s": got.rate(start + 1, killed_at), "after/s": got.rate(back, end)}
    report(f"{deployment} replica killed", got, recovered_s=recovered, **rates)
    assert len(got.lost) <= 1e-4 * len(got.answers), got.lost[:5]
    assert recovered <= 10.0


def test_served_features_follow_a_new_day_without_a_redeploy(
    url: str, settings: Settings, ray_head: Head
) -> None:
    """One more day ingested and featurised while 4 clients ask for the newest prediction:
    every ingress replica serves it within the bound (poll, read, precompute), no request
    fails, nothing is deployed, and the freshness gauge follows."""
    import ray

    deployed = running_config(ray_head.dashboard, auth_headers(settings))
    newest = {"tickers": ["AAPL", "MSFT"]}
    with load(url, lambda i: newest, headers=local_auth()) as got:
        time.sleep(2)
        next_day = settings.model_copy(
            update={"ingest": settings.ingest.model_copy(update={"end": None})}
        )
        run_ingest(next_day)
        build_features(next_day)
        published = time.monotonic()
        wait_until(lambda: {a.feature_date for a in got.answers[-20:]} == {LAST_DAY}, 30)
        followed = time.monotonic() - published
    report("features followed", got, seconds=followed)
    assert got.lost == [] and got.answers[0].feature_date == str(DAY_BEFORE)
    assert followed <= FOLLOW_BOUND_S
    assert running_config(ray_head.dashboard, auth_headers(settings)) == deployed  # no deploy
    port = ray._private.worker._global_node.metrics_export_port
    midnight = dt.datetime.combine(dt.date.fromisoformat(LAST_DAY), dt.time(), dt.timezone.utc)

    def gauge_follows() -> bool:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("ray_app_data_latest_bar_timestamp_seconds{")
        ]
        return len(values) >= 2 and set(values) == {midnight.timestamp()}

    wait_until(gauge_follows, 30)


@pytest.mark.parametrize("kind", names())
def test_every_model_family_trains_registers_serves_and_predicts_over_http(
    url: str, settings: Settings, config_path: Path, ray_head: Head, kind: str
) -> None:
    """``ray-app train --model KIND``'s path: the family's fit (in process: Ray Train's
    placement-group cleaner may look at another cluster on a shared machine), then ``release``
    (evaluation, the logged model with its input example, registration with its files'
    sha256, the gate); then served by the challenger variant from its precomputed table and
    asked over HTTP: the answers are the fitted model's own offline predictions."""
    family = settings.model_copy(deep=True)
    family.train.model = kind
    if kind == "lightgbm":
        family.train.hparams = {"num_boost_round": 30, "min_data_in_leaf": 50}
    data = load_training_data(family)
    assert data.split.holdout is not None
    model = fit_in_process(data, family, data.split.holdout.train_mask, None)
    with mlflow.start_run(experiment_id=connect_mlflow(family)) as run:
        version = release(family, data, model, run.info.run_id, {}).version
    pin = Change(pins={"challenger": str(version)}, challenger_weight=1.0)
    rollout(settings, config_path, pin, **signed(ray_head))

    def ask() -> dict[str, Any]:
        question = {"tickers": ["AAPL", "MSFT"], "as_of": "2012-06-01"}
        answer = requests.post(f"{url}/v1/predict", json=question, headers=local_auth(), timeout=10)
        return dict(answer.json())

    try:  # each ingress replica notices the new model within refresh_s
        wait_until(lambda: {ask()["model_version"] for _ in range(8)} == {version}, 90)
        body = ask()
    finally:
        rollout(settings, config_path, Change(challenger_weight=0.0), **signed(ray_head))
    assert (body["variant"], body["model_version"]) == ("challenger", version)
    frame, _ = load_feature_set(DataRoot(settings.data_root), tickers=["AAPL", "MSFT"])
    upto = frame[frame["date"] <= pd.Timestamp("2012-06-01")]
    expected = model.predict_frame(upto).groupby("ticker")["pred"].last()
    registered = load_version(settings, version).predict_frame(upto)
    assert registered.groupby("ticker")["pred"].last().equals(expected)
    for pred in body["predictions"]:
        assert pred["feature_date"] == "2012-06-01"
        assert pred["predicted_return"] == pytest.approx(expected[pred["ticker"]], rel=1e-4)
