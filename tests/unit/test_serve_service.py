"""The ingress's request logic with fake variants: features, routing, cache, shadow, errors.

No Ray: each variant is an in-process fake with the interface of a DeploymentHandle client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from ray_app.serving import service as service_module
from ray_app.serving.args import IngressConfig, ServeArgs, ShadowSpec
from ray_app.serving.features import FeatureTable
from ray_app.serving.predictor import (
    ColumnSelector,
    Job,
    Result,
    Scores,
    VariantInfo,
    describe,
    predict_jobs,
    score_frames,
)
from ray_app.serving.schemas import PredictRequest
from ray_app.serving.service import ApiError, PredictionService

COLUMNS = ["ret_1d", "vol_20d", "rsi_14"]
DAYS = np.arange(np.datetime64("2012-01-02"), np.datetime64("2012-01-12"))
TODAY = dt.date(2012, 6, 1)


def table(version: str = "fs1") -> FeatureTable:
    """Feature set ``version``; ``fs1+N`` holds N more days than ``fs1``."""
    days = np.arange(DAYS[0], DAYS[-1] + 1 + int(version.partition("+")[2] or 0))
    rng = np.random.default_rng(0)
    frames = {}
    for ticker in ("AAPL", "MSFT", "IBM"):
        values = rng.normal(size=(len(days), len(COLUMNS)))
        values[:, 1] = np.abs(values[:, 1]) + 0.01
        frames[ticker] = (days.astype("datetime64[D]"), values)
    frames["IBM"][1][-1, 0] = np.nan  # its newest row is incomplete
    return FeatureTable(version, COLUMNS, frames)


@dataclass
class Store:
    """The feature store as the ingress sees it: the latest pointer, and every set."""

    latest: str = "fs1"

    def load(self, version: str | None) -> FeatureTable:
        return table(version or self.latest)


@dataclass
class Linear:
    """A model whose prediction is a fixed linear map of the newest row."""

    version: int
    window: int = 1
    name: str = "tiny"
    kind: str = "mlp"
    columns: list[str] = field(default_factory=lambda: ["rsi_14", "ret_1d"])
    feature_version: str = "fs1"

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x[:, -1, :] @ np.array([0.001 * self.version, 0.5])


class FakeVariant:
    """A variant client: serves ``model``; ``fail`` raises, ``delay_s`` sleeps first."""

    def __init__(self, name: str, model: Linear | None, delay_s: float = 0.0) -> None:
        self.name, self.model, self.delay_s = name, model, delay_s
        self.fail = False
        self.load_error: str | None = None  # a failed load that kept ``model``
        self.info_delay_s = 0.0  # how long asking what it serves takes
        self.calls = 0
        self.score_calls = 0

    async def predict(self, job: Job) -> Result:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.fail or self.model is None:
            raise RuntimeError("boom")
        return predict_jobs(self.model, ColumnSelector(self.model.columns), [job])[0]

    async def predict_within(self, job: Job, timeout_s: float) -> Result:
        return await asyncio.wait_for(self.predict(job), timeout_s)

    async def info(self, timeout_s: float) -> VariantInfo:
        await asyncio.sleep(self.info_delay_s)
        error = self.load_error if self.model else "no alias 'champion'"
        return describe(self.name, self.name, self.model, None, error)

    async def scores(
        self, feature_version: str, tickers: list[str], timeout_s: float
    ) -> Scores | None:
        self.score_calls += 1
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("boom")
        if self.model is None:
            return None
        rows = table(feature_version)
        frames = {t: rows.frames[t] for t in tickers}
        select = ColumnSelector(self.model.columns)
        preds = score_frames(self.model, select, tuple(rows.columns), frames)
        return Scores(self.model.name, self.model.version, feature_version, preds)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def cache(self, hits: int, misses: int, precomputed: int = 0) -> None:
        self.events.append(("cache", (hits, misses, precomputed)))

    def shadow(self, variant: str, outcome: str, count: int = 1) -> None:
        self.events.extend([("shadow", outcome)] * count)

    def shadow_diff(self, variant: str, diffs: list[float]) -> None:
        self.events.append(("diff", diffs))

    def latest_bar(self, day: dt.date) -> None:
        self.events.append(("latest_bar", day))


def make(
    variants: dict[str, FakeVariant],
    weights: dict[str, float] | None = None,
    shadow: ShadowSpec | None = None,
    store: Store | None = None,
    **limits: Any,
) -> tuple[PredictionService, Recorder]:
    specs = [
        {"name": n, "ref": n, "weight": 1.0 if i == 0 else 0.0} for i, n in enumerate(variants)
    ]
    limits.setdefault("precompute", False)  # the per-request path, unless a test asks
    args = ServeArgs(variants=specs, **limits)
    recorder = Recorder()
    store = store or Store()
    service = PredictionService(
        args, dict(variants), recorder, store.load, lambda: store.latest, lambda: TODAY
    )  # type: ignore[arg-type]
    config = args.ingress_config().model_copy(update={"shadow": shadow})
    if weights:
        config = config.model_copy(update={"weights": weights})
    run(service.reconfigure(config))
    return service, recorder


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def ask(tickers: list[str], as_of: str | None = None) -> PredictRequest:
    return PredictRequest(tickers=tickers, as_of=as_of)  # type: ignore[arg-type]


def test_predictions_use_the_newest_row_on_or_before_as_of() -> None:
    service, _ = make({"champion": FakeVariant("champion", Linear(1))})
    answer = run(service.predict(ask(["aapl", "MSFT"], "2012-01-08"), None, "r1"))
    out = answer.response
    assert (out.variant, out.model_name, out.model_version, out.request_id) == (
        "champion",
        "tiny",
        1,
        "r1",
    )
    rows = {t: service.table.frames[t][1][6] for t in ("AAPL", "MSFT")}  # type: ignore[union-attr]
    for pred in out.predictions:
        row = rows[pred.ticker]
        expected = row[2] * 0.001 + row[0] * 0.5
        assert pred.predicted_return == pytest.approx(expected)
        assert pred.feature_date == dt.date(2012, 1, 8)
        assert pred.score == pytest.approx(expected / row[1])
        assert pred.direction == ("up" if expected > 0 else "down")


def test_a_repeated_request_is_answered_from_the_cache() -> None:
    variant = FakeVariant("champion", Linear(1))
    service, recorder = make({"champion": variant})
    first = run(service.predict(ask(["AAPL", "MSFT"]), None, "a"))
    second = run(service.predict(ask(["MSFT", "AAPL"]), None, "b"))
    assert variant.calls == 1 and second.cache_hits == 2
    assert {p.ticker: p.predicted_return for p in first.response.predictions} == {
        p.ticker: p.predicted_return for p in second.response.predictions
    }
    assert ("cache", (2, 0, 0)) in recorder.events


def test_a_new_model_version_drops_the_old_entries_and_is_never_mixed() -> None:
    variant = FakeVariant("champion", Linear(1))
    service, _ = make({"champion": variant})

    async def scenario() -> tuple[Any, Any]:
        await service.predict(ask(["AAPL"]), None, "a")  # AAPL cached under v1
        variant.model = Linear(2)  # a rollout swaps the model under the ingress
        mixed = await service.predict(ask(["AAPL", "MSFT"]), None, "b")
        await service.refresh()
        return mixed, service.cache

    mixed, cache = run(scenario())
    assert mixed.response.model_version == 2 and mixed.cache_hits == 0
    assert all(k.version == 2 for k in cache._entries)


def test_bad_requests_are_refused_with_their_reason() -> None:
    service, _ = make({"champion": FakeVariant("champion", Linear(1))})
    cases = {
        404: (ask(["AAPL", "NOPE"]), "NOPE"),
        422: (ask(["AAPL"], "2012-07-01"), "in the future"),
    }
    cases_before = (ask(["AAPL"], "2011-12-30"), "before the data")
    for status, (request, reason) in [*cases.items(), (422, cases_before)]:
        with pytest.raises(ApiError, match=reason) as caught:
            run(service.predict(request, None, "x"))
        assert caught.value.status == status
    with pytest.raises(ApiError, match="IBM on 2012-01-11") as nan:
        run(service.predict(ask(["IBM"]), None, "x"))
    assert nan.value.status == 422


def test_a_sequence_model_needs_a_full_window() -> None:
    service, _ = make({"champion": FakeVariant("champion", Linear(1, window=5, kind="gru"))})
    with pytest.raises(ApiError, match="needs 5 feature rows on or before 2012-01-03") as caught:
        run(service.predict(ask(["AAPL"], "2012-01-03"), None, "x"))
    assert caught.value.status == 422
    out = run(service.predict(ask(["AAPL"], "2012-01-06"), None, "x")).response
    assert out.predictions[0].feature_date == dt.date(2012, 1, 6)


def test_traffic_to_a_variant_without_a_model_goes_to_the_primary() -> None:
    service, _ = make(
        {
            "champion": FakeVariant("champion", Linear(1)),
            "challenger": FakeVariant("challenger", None),
        },
        weights={"champion": 0.5, "challenger": 0.5},
    )
    variants = {
        run(service.predict(ask(["AAPL"]), f"client-{i}", "r")).response.variant for i in range(20)
    }
    assert variants == {"champion"}
    assert service.readiness() == (True, ["no_model:challenger"])


def test_without_a_champion_nothing_is_served_and_readiness_says_why() -> None:
    service, _ = make(
        {
            "champion": FakeVariant("champion", None),
            "challenger": FakeVariant("challenger", Linear(2)),
        }
    )
    with pytest.raises(ApiError, match="no model to serve") as caught:
        run(service.predict(ask(["AAPL"]), None, "r"))
    assert caught.value.status == 503
    assert service.readiness() == (False, ["no_model:champion"])  # details: /v1/models
    assert "no alias 'champion'" in (service.infos["champion"].error or "")


def test_a_champion_promoted_meanwhile_is_served_without_waiting_for_the_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reproduction: a rollout under load lost requests with 503 "no model" from an
    ingress replica still holding what the champion variant said before its promotion."""
    monkeypatch.setattr(service_module, "UNSERVABLE_REFRESH_S", 0.0)
    champion = FakeVariant("champion", None)
    service, _ = make({"champion": champion, "challenger": FakeVariant("challenger", Linear(2))})
    with pytest.raises(ApiError, match="no model to serve"):
        run(service.predict(ask(["AAPL"]), None, "r"))
    champion.model = Linear(1)  # promoted and loaded; refresh_s (30 s) has not passed
    answer = run(service.predict(ask(["AAPL"]), None, "r")).response
    assert (answer.variant, answer.model_version) == ("champion", 1)
    assert service.readiness() == (True, [])


def test_a_champion_that_does_not_answer_is_refused_quickly_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service_module, "UNSERVABLE_REFRESH_S", 0.0)
    monkeypatch.setattr(service_module, "UNSERVABLE_WAIT_S", 0.05)
    champion = FakeVariant("champion", None)
    service, _ = make({"champion": champion})
    run(service.refresh())  # it answered once, without a model
    champion.info_delay_s = 5.0  # its replica hangs: each reask would take the whole timeout

    async def refused_after() -> float:
        started = time.monotonic()
        with pytest.raises(ApiError, match="no model to serve"):
            await service.predict(ask(["AAPL"]), None, "r")
        return time.monotonic() - started

    assert run(refused_after()) < 1.0


def test_a_model_needing_columns_the_features_lack_gets_no_traffic() -> None:
    odd = Linear(2, columns=["rsi_14", "beta_60d"])
    service, _ = make(
        {
            "champion": FakeVariant("champion", Linear(1)),
            "challenger": FakeVariant("challenger", odd),
        },
        weights={"champion": 0.0, "challenger": 1.0},
    )
    assert run(service.predict(ask(["AAPL"]), None, "r")).response.variant == "champion"
    lonely, _ = make({"champion": FakeVariant("champion", odd)})
    with pytest.raises(ApiError, match=r"needs column\(s\) beta_60d that feature set fs1 lacks"):
        run(lonely.predict(ask(["AAPL"]), None, "r"))
    assert lonely.readiness() == (False, ["missing_columns:champion"])


@pytest.mark.parametrize("failing", ["champion", "challenger"])
def test_a_variant_that_failed_to_load_keeps_serving_and_readiness_names_it(failing: str) -> None:
    variants = {n: FakeVariant(n, Linear(v)) for n, v in (("champion", 1), ("challenger", 2))}
    variants[failing].load_error = "cannot load '9': no version 9"
    service, _ = make(variants, weights={"champion": 0.5, "challenger": 0.5})
    answers = [run(service.predict(ask(["AAPL"]), f"c{i}", "r")).response for i in range(20)]
    assert {(a.variant, a.model_version) for a in answers} == {("champion", 1), ("challenger", 2)}
    assert service.readiness() == (True, [f"load_failed:{failing}"])


def test_a_failing_shadow_changes_nothing_and_is_counted() -> None:
    shadow = FakeVariant("challenger", Linear(2))
    shadow.fail = True
    variants = {"champion": FakeVariant("champion", Linear(1)), "challenger": shadow}
    plain, _ = make(dict(variants))
    mirrored, recorder = make(variants, shadow=ShadowSpec(variant="challenger", fraction=1.0))

    async def both() -> tuple[Any, Any]:
        a = await plain.predict(ask(["AAPL"]), None, "r")
        b = await mirrored.predict(ask(["AAPL"]), None, "r")
        await asyncio.gather(*mirrored._pending)
        return a, b

    a, b = run(both())
    assert a.response == b.response
    assert mirrored.gate is not None and mirrored.gate.counts["error"] == 1
    assert [e for e in recorder.events if e[0] == "shadow"] == [
        ("shadow", "sent"),
        ("shadow", "error"),
    ]


def test_a_slow_shadow_is_bounded_cut_and_never_waited_for() -> None:
    variants = {
        "champion": FakeVariant("champion", Linear(1)),
        "challenger": FakeVariant("challenger", Linear(2), delay_s=5.0),
    }
    service, _ = make(
        variants,
        shadow=ShadowSpec(variant="challenger", fraction=1.0),
        shadow_limits={"max_in_flight": 2, "timeout_s": 0.2},
    )

    async def burst() -> float:
        start = time.perf_counter()
        for i in range(5):
            await service.predict(ask(["AAPL"]), f"c{i}", "r")
        elapsed = time.perf_counter() - start
        await asyncio.gather(*service._pending)
        return elapsed

    assert run(burst()) < 0.15
    assert service.gate is not None
    counts = {"precomputed": 0, "sent": 2, "dropped": 3, "ok": 0, "error": 0, "timeout": 2}
    assert service.gate.counts == counts
    assert service.gate.in_flight == 0


def test_a_working_shadow_logs_its_difference() -> None:
    variants = {
        "champion": FakeVariant("champion", Linear(1)),
        "challenger": FakeVariant("challenger", Linear(2)),
    }
    service, recorder = make(variants, shadow=ShadowSpec(variant="challenger", fraction=1.0))

    async def once() -> Any:
        answer = await service.predict(ask(["AAPL"]), None, "r")
        await asyncio.gather(*service._pending)
        return answer

    answer = run(once())
    row = service.table.frames["AAPL"][1][-1]  # type: ignore[union-attr]
    diffs = [e[1] for e in recorder.events if e[0] == "diff"]
    assert diffs == [[pytest.approx(abs(row[2]) * 0.001)]]
    assert answer.response.model_version == 1


def test_reconfigure_refuses_weights_for_unknown_variants_and_reloads_features() -> None:
    service, recorder = make({"champion": FakeVariant("champion", Linear(1))})
    with pytest.raises(ValueError, match="weights name"):
        run(service.reconfigure(IngressConfig(weights={"other": 1.0})))
    run(service.predict(ask(["AAPL"]), None, "r"))
    assert len(service.cache) == 1
    run(service.reconfigure(IngressConfig(weights={"champion": 1.0}, feature_version="fs2")))
    assert service.table is not None and service.table.feature_version == "fs2"
    assert len(service.cache) == 0
    assert recorder.events.count(("latest_bar", dt.date(2012, 1, 11))) == 2  # fs1, then fs2


def precomputing(variants: dict[str, FakeVariant], **kwargs: Any) -> PredictionService:
    service, _ = make(variants, precompute=True, **kwargs)
    return service


async def settle(service: PredictionService) -> None:
    """Ask the variants and wait for the precomputed tables they were asked for."""
    await service.refresh()
    await asyncio.gather(*service._scoring.values())


def test_precomputed_predictions_equal_the_variant_answers_without_calling_it() -> None:
    variant = FakeVariant("champion", Linear(1))
    per_request, _ = make({"champion": FakeVariant("champion", Linear(1))})
    service = precomputing({"champion": variant})
    days = [str(d) for d in DAYS[:-1]] + [None]

    async def ask_all(s: PredictionService) -> list[Any]:
        await settle(s)
        return [(await s.predict(ask(["AAPL", "MSFT"], d), None, "r")).response for d in days]

    assert run(ask_all(service)) == run(ask_all(per_request))
    assert (variant.calls, variant.score_calls) == (0, 1)
    assert service.scores["champion"].serves("tiny", 1, "fs1")


def test_a_precomputed_table_goes_with_its_model_version() -> None:
    variant = FakeVariant("champion", Linear(1))
    service = precomputing({"champion": variant})

    async def scenario() -> list[int]:
        await settle(service)
        variant.model = Linear(2)  # a rollout swaps the model under the ingress
        await service.refresh()  # notices v2: drops v1's table, asks for v2's
        assert "champion" not in service.scores
        during = (await service.predict(ask(["AAPL"]), None, "a")).response.model_version
        await settle(service)
        after = (await service.predict(ask(["MSFT"]), None, "b")).response.model_version
        return [during, after, variant.calls, variant.score_calls]

    assert run(scenario()) == [2, 2, 1, 2]
    assert service.scores["champion"].version == 2


def test_a_variant_that_cannot_precompute_is_asked_per_request_and_retried_later() -> None:
    variant = FakeVariant("champion", Linear(1))
    variant.fail = True
    service = precomputing({"champion": variant})

    async def scenario() -> None:
        await settle(service)
        variant.fail = False
        await service.predict(ask(["AAPL"]), None, "a")
        await settle(service)  # within the retry delay: not asked again

    run(scenario())
    assert "champion" not in service.scores
    assert (variant.calls, variant.score_calls) == (1, 1)
    assert service._scores_retry_at["champion"] > time.monotonic()


def test_a_model_loaded_after_the_last_request_is_still_precomputed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reproduction: `make run`'s one smoke request came before a variant's model, and
    with no traffic after it the daily signals waited in vain for the precomputed table."""
    monkeypatch.setattr(service_module, "FRESHNESS_EVERY_S", 0.01)
    variant = FakeVariant("champion", None)
    service = precomputing({"champion": variant})

    async def scenario() -> bool:
        assert service.config is not None
        await service.reconfigure(service.config)  # its background upkeep, in this loop
        variant.model = Linear(1)  # loaded after the last request; no request follows
        for _ in range(200):
            if service.precomputes("champion"):
                return True
            await asyncio.sleep(0.01)
        return False

    assert run(scenario())


def test_a_precomputed_shadow_is_compared_without_a_call() -> None:
    shadow = FakeVariant("challenger", Linear(2))
    variants = {"champion": FakeVariant("champion", Linear(1)), "challenger": shadow}
    service, recorder = make(
        variants, shadow=ShadowSpec(variant="challenger", fraction=1.0), precompute=True
    )

    async def scenario() -> list[Any]:
        await settle(service)
        return [await service.predict(ask(["AAPL"], d), None, "r") for d in ("2012-01-05", None)]

    answers = run(scenario())
    assert service.gate is not None and service.gate.counts["precomputed"] == 2
    assert service.gate.counts["sent"] == 0 and shadow.calls == 0 and not service._pending
    newest = service.table.frames["AAPL"][1][-1]  # type: ignore[union-attr]
    logged = answers[1].shadow  # a summary goes on the request's own log line
    assert (logged["shadow_variant"], logged["shadow_model_version"]) == ("challenger", 2)
    assert logged["max_abs_diff"] == pytest.approx(abs(newest[2]) * 0.001)
    assert [e for e in recorder.events if e[0] == "shadow"] == []  # counted, exported in bulk
    service._export_shadow()
    assert [e for e in recorder.events if e[0] == "shadow"] == [("shadow", "precomputed")] * 2


def test_following_the_newest_features_swaps_once_their_predictions_are_ready() -> None:
    store, variant = Store(), FakeVariant("champion", Linear(1))
    service, recorder = make({"champion": variant}, store=store, precompute=True)

    async def across_a_new_day() -> list[Any]:
        await settle(service)
        before = await service.predict(ask(["AAPL"]), None, "r")
        store.latest = "fs1+1"
        await service.follow_once()
        after = await service.predict(ask(["AAPL"]), None, "r")
        return [answer.response.predictions[0].feature_date for answer in (before, after)]

    assert run(across_a_new_day()) == [dt.date(2012, 1, 11), dt.date(2012, 1, 12)]
    assert service.table is not None and service.table.feature_version == "fs1+1"
    assert (variant.calls, variant.score_calls) == (0, 2)  # both days answered precomputed
    assert ("latest_bar", dt.date(2012, 1, 12)) in recorder.events


def test_a_request_in_flight_keeps_the_features_it_started_with() -> None:
    store = Store()
    service = precomputing({"champion": FakeVariant("champion", Linear(1))}, store=store)
    run(settle(service))
    old = service.table
    assert old is not None
    windows = [old.window("AAPL", None, 1)]
    store.latest = "fs1+1"
    run(service.follow_once())
    assert service.precomputed("champion", old, windows) is None  # not the new set's rows
    assert service.precomputed("champion", service.table, windows) is not None  # type: ignore[arg-type]


def test_a_pinned_feature_set_stays_pinned() -> None:
    store = Store()
    service, _ = make({"champion": FakeVariant("champion", Linear(1))}, store=store)
    run(service.reconfigure(IngressConfig(weights={"champion": 1.0}, feature_version="fs1")))
    store.latest = "fs1+1"
    run(service.follow_once())
    assert service.table is not None and service.table.feature_version == "fs1"
