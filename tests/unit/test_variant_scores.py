"""A variant predicts each row of a feature set once per model: the ingress replicas that ask
together wait for one pass, and a replica that restarts reads the persisted table back.

No Ray: the class ``@serve.deployment`` wrapped, a counting fake model through the loader
hook, and an in-memory feature set.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from ray_app.core.storage import DataRoot
from ray_app.data.signals import scores_parts, served_tables
from ray_app.serving.args import AuthSpec, ServeArgs
from ray_app.serving.features import FeatureTable
from ray_app.serving.precompute import score_version
from ray_app.serving.predictor import ServingModel
from ray_app.serving.variant import Variant

COLUMNS = ["ret_1d", "vol_20d"]
DAYS = np.arange(np.datetime64("2024-01-01"), np.datetime64("2024-01-11"))


@dataclass
class Counting:
    """A window-3 model whose prediction is the window's sum; counts the windows it scores."""

    name: str = "m"
    version: int = 7
    kind: str = "mlp"
    columns: list[str] = field(default_factory=lambda: list(COLUMNS))
    window: int = 3
    feature_version: str = "fs1"
    digest: str = "content-1"
    scored: list[int] = field(default_factory=list)

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.scored.append(len(x))
        return np.asarray(x.sum(axis=(1, 2)), dtype=np.float64)


MODELS: list[Counting] = []


def counting_loader(args: ServeArgs) -> object:
    """Loads v7 of model m; ``ref`` "reset" is another model that a registry reset numbered
    v7 too (same name and version, other content)."""

    def load(ref: str) -> ServingModel:
        MODELS.append(Counting(digest="content-2" if ref == "reset" else "content-1"))
        return MODELS[-1]

    return load


def table(days: np.ndarray = DAYS) -> FeatureTable:
    rng = np.random.default_rng(0)
    frames = {
        "AAPL": (days, rng.normal(size=(len(days), 2))),
        "MSFT": (days[2:], rng.normal(size=(len(days) - 2, 2))),
        "IBM": (days[:2], rng.normal(size=(2, 2))),  # shorter than the window: no prediction
    }
    return FeatureTable("fs1", COLUMNS, frames)


async def variant(tmp_path: Path, name: str = "champion", ref: str = "champion") -> Variant:
    args = ServeArgs(
        data_root=str(tmp_path),
        auth=AuthSpec(mode="insecure", rate_limit=None),
        loader=f"{__name__}:counting_loader",
    )
    replica = Variant.func_or_class(name, args)
    await replica.reconfigure({"ref": ref})
    return replica


async def settle(replica: Variant) -> None:
    while replica._persisting:
        await asyncio.gather(*replica._persisting)


@pytest.fixture(autouse=True)
def feature_set(monkeypatch: pytest.MonkeyPatch) -> list[FeatureTable]:
    """The feature set the variant reads; a test may swap the table it holds."""
    held = [table()]
    monkeypatch.setattr(
        FeatureTable, "load", classmethod(lambda cls, settings, version=None: held[0])
    )
    MODELS.clear()
    return held


def test_two_ingress_replicas_asking_at_once_get_one_pass(tmp_path: Path) -> None:
    async def scenario() -> None:
        replica = await variant(tmp_path)
        tickers = ["AAPL", "IBM", "MSFT"]
        first, second = await asyncio.gather(
            replica.scores("fs1", tickers), replica.scores("fs1", tickers)
        )
        assert first is not None and second is not None
        assert MODELS[0].scored == [8, 6]  # AAPL's and MSFT's windows, once each
        for ticker in tickers:
            np.testing.assert_array_equal(first.preds[ticker], second.preds[ticker])
        assert np.isnan(first.preds["IBM"]).all() and np.isnan(first.preds["AAPL"][:2]).all()
        await settle(replica)

    asyncio.run(scenario())
    assert DataRoot(str(tmp_path)).exists(*scores_parts("m", "7", "fs1"))


def test_a_restarted_replica_reads_the_persisted_table_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        replica = await variant(tmp_path)
        before = await replica.scores("fs1", ["AAPL", "IBM", "MSFT"])
        await settle(replica)
        again = await variant(tmp_path, "challenger")  # a new replica, another variant name
        after = await again.scores("fs1", ["MSFT", "IBM"])
        await settle(again)
        assert before is not None and after is not None
        assert MODELS[1].scored == []  # nothing predicted again
        for ticker in ("MSFT", "IBM"):
            np.testing.assert_array_equal(after.preds[ticker], before.preds[ticker])
        rest = await again.scores("fs1", ["AAPL"])
        assert rest is not None and MODELS[1].scored == []
        np.testing.assert_array_equal(rest.preds["AAPL"], before.preds["AAPL"])

    asyncio.run(scenario())
    pointed = {t.variant: t.model_version for t in served_tables(DataRoot(str(tmp_path)))}
    assert pointed == {"champion": "7", "challenger": "7"}


def test_a_persisted_table_that_does_not_fit_the_rows_is_predicted_again(
    tmp_path: Path, feature_set: list[FeatureTable]
) -> None:
    async def scenario() -> None:
        replica = await variant(tmp_path)
        await replica.scores("fs1", ["AAPL", "IBM", "MSFT"])
        await settle(replica)
        feature_set[0] = table(DAYS + 30)  # same version name, other dates: not these rows
        again = await variant(tmp_path)
        after = await again.scores("fs1", ["AAPL", "MSFT"])
        assert after is not None and MODELS[1].scored == [8, 6]

    asyncio.run(scenario())


def test_a_persisted_table_of_another_model_with_the_same_version_is_predicted_again(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        replica = await variant(tmp_path)
        await replica.scores("fs1", ["AAPL", "IBM", "MSFT"])
        await settle(replica)
        other = await variant(tmp_path, ref="reset")
        after = await other.scores("fs1", ["AAPL", "IBM", "MSFT"])
        assert after is not None and MODELS[1].scored == [8, 6]
        await settle(other)
        again = await variant(tmp_path, ref="reset")  # the table is now the new model's
        await again.scores("fs1", ["AAPL", "IBM", "MSFT"])
        assert MODELS[2].scored == []

    asyncio.run(scenario())


def test_a_new_days_feature_set_costs_its_new_rows_only(
    tmp_path: Path, feature_set: list[FeatureTable]
) -> None:
    """fs2 is fs1 plus one day; MSFT's fourth row was also restated (a corporate action's
    adjustment): its windows from that row on are predicted again, nothing else."""
    old = table()
    days = np.append(DAYS, DAYS[-1] + 1)
    rng = np.random.default_rng(1)
    frames = {
        t: (np.append(d, days[-1]), np.vstack([v, rng.normal(size=(1, 2))]))
        for t, (d, v) in old.frames.items()
    }
    frames["MSFT"][1][3, 0] += 0.5
    new = FeatureTable("fs2", COLUMNS, frames)

    async def scenario() -> None:
        replica = await variant(tmp_path)
        await replica.scores("fs1", ["AAPL", "IBM", "MSFT"])
        feature_set[0] = new
        after = await replica.scores("fs2", ["AAPL", "IBM", "MSFT"])
        assert after is not None
        # AAPL: its new row; IBM: its first full window (3 rows now); MSFT: rows 3.. (6 of 9).
        assert MODELS[0].scored == [8, 6, 1, 1, 6]
        fresh = await variant(tmp_path / "elsewhere")
        expected = await fresh.scores("fs2", ["AAPL", "IBM", "MSFT"])
        assert expected is not None and MODELS[1].scored == [9, 1, 7]
        for ticker in ("AAPL", "IBM", "MSFT"):
            np.testing.assert_array_equal(after.preds[ticker], expected.preds[ticker])
        await settle(replica)
        await settle(fresh)

    asyncio.run(scenario())


def test_a_table_precomputed_before_the_deploy_is_read_back_by_every_variant(
    tmp_path: Path,
) -> None:
    """``score_version`` (a rollout's Ray task, called here without Ray) stores the pinned
    version's table; the variants that then serve it predict nothing, answer the predictions a
    pass of their own gives, and a second precompute finds the table there."""
    args = ServeArgs(
        data_root=str(tmp_path),
        auth=AuthSpec(mode="insecure", rate_limit=None),
        loader=f"{__name__}:counting_loader",
    )
    done = score_version(args, ("champion", "challenger"), "7", None)
    assert (done.error, done.version, done.rows, done.reused) == ("", 7, 20, False)
    assert MODELS[0].scored == [8, 6]
    assert served_tables(DataRoot(str(tmp_path))) == []  # no variant serves it yet

    async def scenario() -> None:
        replica = await variant(tmp_path)
        got = await replica.scores("fs1", ["AAPL", "IBM", "MSFT"])
        await settle(replica)
        fresh = await variant(tmp_path / "elsewhere")
        expected = await fresh.scores("fs1", ["AAPL", "IBM", "MSFT"])
        assert got is not None and expected is not None
        assert MODELS[1].scored == [] and MODELS[2].scored == [8, 6]
        for ticker in ("AAPL", "IBM", "MSFT"):
            np.testing.assert_array_equal(got.preds[ticker], expected.preds[ticker])
        await settle(fresh)

    asyncio.run(scenario())
    again = score_version(args, ("champion",), "7", None)
    assert again.reused and MODELS[3].scored == []
    assert "table already there" in again.detail


def test_a_version_that_cannot_be_precomputed_is_reported_not_raised(tmp_path: Path) -> None:
    args = ServeArgs(data_root=str(tmp_path), auth=AuthSpec(mode="insecure", rate_limit=None))
    args = args.model_copy(update={"loader": "no.such.module:loader"})
    done = score_version(args, ("champion",), "7", None)
    assert "not precomputed" in done.detail and "no.such.module" in done.error
