"""Models and baselines: no Ray, scalers fitted on training rows, point-in-time windows, and
models that actually learn a signal that is there."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from ray_app.data.features import TARGET
from ray_app.models.networks import (
    HParams,
    PersistenceBaseline,
    RidgeBaseline,
    StandardScaler,
    ZeroBaseline,
    build_model,
    evaluate_loss,
    fit_epoch,
    make_loader,
    make_optimizer,
    make_windows,
    predict,
    train_model,
)

COLUMNS = ["f0", "f1", "f2", "f3"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Another job shares the CPUs; one torch thread also makes the runs repeatable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def panel(
    n_days: int = 300,
    tickers: tuple[str, ...] = ("AAA", "BBB", "CCC"),
    seed: int = 0,
    signal: float = 0.01,
) -> pd.DataFrame:
    """A (date, ticker)-sorted frame whose target is linear in today's features plus noise."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-01", periods=n_days)
    frame = pd.DataFrame([(t, d) for d in dates for t in tickers], columns=["ticker", "date"])
    x = rng.normal(size=(len(frame), len(COLUMNS)))
    frame[COLUMNS] = x
    frame["ret_1d"] = rng.normal(0, 0.01, len(frame))
    weights = np.array([1.0, -0.5, 0.25, 0.0])
    frame[TARGET] = signal * x @ weights + rng.normal(0, 0.002, len(frame))
    return frame


def test_models_module_never_imports_ray() -> None:
    code = (
        "import sys, ray_app.models.networks, ray_app.training.splits, ray_app.models.metrics; "
        "leaked = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')); "
        "print(leaked); sys.exit(1 if leaked else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hparams_are_typed_and_closed() -> None:
    assert HParams().window == 20
    with pytest.raises(ValidationError, match="hiden_size"):
        HParams(hiden_size=32)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="dropout"):
        HParams(dropout=1.0)
    with pytest.raises(ValidationError, match="lr"):
        HParams(lr=0)


@pytest.mark.parametrize(("kind", "shape"), [("mlp", (7, 4)), ("gru", (7, 5, 4))])
def test_build_model_is_seeded_and_predicts_one_value_per_input(kind: str, shape: tuple) -> None:
    hp = HParams(hidden_size=8, num_layers=2)
    state = torch.random.get_rng_state()
    a, b = build_model(kind, 4, hp, seed=1), build_model(kind, 4, hp, seed=1)  # type: ignore[arg-type]
    c = build_model(kind, 4, hp, seed=2)  # type: ignore[arg-type]
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    params = [torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c)]
    assert torch.equal(params[0], params[1]) and not torch.equal(params[0], params[2])
    out = predict(a, np.random.default_rng(0).normal(size=shape))
    assert out.shape == (7,) and out.dtype == np.float64
    np.testing.assert_array_equal(out, 0.0)  # untrained, it is the zero forecast


def test_build_model_refuses_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown model kind 'lstm'"):
        build_model("lstm", 4, HParams())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_features"):
        build_model("mlp", 0, HParams())


def test_scaler_statistics_round_trip_and_constant_columns() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    scaler = StandardScaler.fit(x)
    np.testing.assert_allclose(scaler.mean, [3.0, 5.0])
    np.testing.assert_allclose(scaler.std, [np.sqrt(8 / 3), 1.0])
    scaled = scaler.transform(x)
    np.testing.assert_allclose(scaled, [[-np.sqrt(1.5), 0.0], [0.0, 0.0], [np.sqrt(1.5), 0.0]])
    restored = StandardScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(restored.transform(x), scaled)
    windows = np.stack([x, x])  # (2, 3, 2): windows scale along the feature axis too
    np.testing.assert_array_equal(scaler.transform(windows)[1], scaled)
    with pytest.raises(ValueError, match="fitted on 2 features"):
        scaler.transform(np.zeros((1, 3)))


def test_scaler_and_ridge_are_fitted_on_the_training_window_only() -> None:
    frame = panel()
    train = frame["date"] < pd.Timestamp("2021-09-01")
    scaler = StandardScaler.fit(frame.loc[train, COLUMNS])
    ridge = RidgeBaseline(COLUMNS, alpha=1.0).fit(frame[train])
    wild = frame.copy()
    wild.loc[~train, COLUMNS] = wild.loc[~train, COLUMNS] * 1000 + 50
    wild.loc[~train, TARGET] = 1.0
    scaler_wild = StandardScaler.fit(wild.loc[train, COLUMNS])
    ridge_wild = RidgeBaseline(COLUMNS, alpha=1.0).fit(wild[train])
    np.testing.assert_array_equal(scaler.mean, scaler_wild.mean)
    np.testing.assert_array_equal(ridge.coef, ridge_wild.coef)
    assert ridge.scaler is not None
    np.testing.assert_allclose(ridge.scaler.mean, frame.loc[train, COLUMNS].mean())
    assert not np.allclose(ridge.scaler.mean, frame[COLUMNS].mean(), atol=1e-4)


def test_ridge_with_alpha_zero_is_least_squares() -> None:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(rng.normal(size=(12, 3)), columns=COLUMNS[:3])
    frame[TARGET] = rng.normal(size=12)
    design = np.column_stack([np.ones(12), frame[COLUMNS[:3]].to_numpy()])
    beta = np.linalg.lstsq(design, frame[TARGET].to_numpy(), rcond=None)[0]
    ridge = RidgeBaseline(COLUMNS[:3], alpha=0.0).fit(frame)
    np.testing.assert_allclose(ridge.predict(frame), design @ beta, atol=1e-10)
    shrunk = RidgeBaseline(COLUMNS[:3], alpha=50.0).fit(frame)
    assert np.linalg.norm(shrunk.coef) < np.linalg.norm(ridge.coef)
    with pytest.raises(ValueError, match="before fit"):
        RidgeBaseline(COLUMNS).predict(frame)


def test_zero_and_persistence_baselines() -> None:
    frame = panel(n_days=5)
    np.testing.assert_array_equal(ZeroBaseline().fit(frame).predict(frame), np.zeros(15))
    persistence = PersistenceBaseline().fit(frame)
    np.testing.assert_array_equal(persistence.predict(frame), frame["ret_1d"].to_numpy())
    with pytest.raises(ValueError, match="'ret_1d'"):
        PersistenceBaseline().fit(frame.drop(columns="ret_1d"))


def test_windows_only_hold_the_tickers_own_past_rows() -> None:
    """Each feature encodes (ticker, date); rows are shuffled and one ticker has gaps."""
    dates = pd.bdate_range("2022-01-03", periods=30)
    rows = [(t, d) for d in dates for t in ("AAA", "BBB", "CCC")]
    frame = pd.DataFrame(rows, columns=["ticker", "date"])
    frame = frame.drop(index=frame.index[(frame["ticker"] == "CCC")][::4])
    frame = frame[~((frame["ticker"] == "BBB") & (frame["date"] > dates[3]))]  # BBB: 4 rows
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    frame["tid"] = frame["ticker"].map({"AAA": 1.0, "BBB": 2.0, "CCC": 3.0})
    frame["day"] = (frame["date"] - dates[0]).dt.days.astype(float)
    frame[TARGET] = np.arange(len(frame), dtype=float)
    x, y, index = make_windows(frame, ["tid", "day"], window=5)
    counts = frame.groupby("ticker").size()
    assert len(index) == sum(max(0, n - 4) for n in counts)  # BBB's 4 rows make no window
    assert np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(y, frame[TARGET].to_numpy()[index])
    assert x.shape == (len(index), 5, 2)
    rows_day = frame["day"].to_numpy()[index]
    assert np.all(x[:, :, 0] == frame["tid"].to_numpy()[index][:, None])  # own ticker only
    assert np.all(x[:, -1, 1] == rows_day)  # the window ends at the row itself
    assert np.all(np.diff(x[:, :, 1], axis=1) > 0)  # strictly earlier days before it
    assert np.all(x[:, :, 1] <= rows_day[:, None])  # never a later day
    ccc_days = np.sort(frame.loc[frame["ticker"] == "CCC", "day"].to_numpy())
    newest = np.flatnonzero((x[:, -1, 0] == 3.0) & (rows_day == ccc_days[-1]))
    np.testing.assert_array_equal(x[newest[0], :, 1], ccc_days[-5:])


def test_windows_apply_the_scaler_and_refuse_duplicate_days() -> None:
    frame = panel(n_days=10)
    scaler = StandardScaler.fit(frame[COLUMNS])
    x, _, index = make_windows(frame, COLUMNS, window=3, scaler=scaler)
    np.testing.assert_allclose(x[:, -1], scaler.transform(frame[COLUMNS])[index], rtol=1e-6)
    with pytest.raises(ValueError, match="more than one row"):
        make_windows(pd.concat([frame, frame.iloc[:1]]), COLUMNS, window=3)


def test_mlp_learns_a_linear_signal_better_than_zero() -> None:
    frame = panel(n_days=800)
    train = (frame["date"] < pd.Timestamp("2023-06-01")).to_numpy()
    scaler = StandardScaler.fit(frame.loc[train, COLUMNS])
    x, y = scaler.transform(frame[COLUMNS]), frame[TARGET].to_numpy(np.float32)
    hp = HParams(hidden_size=32, num_layers=2, dropout=0.0, lr=3e-3, batch_size=64, epochs=6)
    model = build_model("mlp", len(COLUMNS), hp, seed=0)
    losses = train_model(model, x[train], y[train], hp, seed=0)
    assert losses[-1] < losses[0]
    test_mse = np.mean((predict(model, x[~train]) - y[~train]) ** 2)
    zero_mse = np.mean(y[~train] ** 2)
    assert test_mse < 0.1 * zero_mse


def test_gru_uses_the_past_rows_in_its_window() -> None:
    """The target is a feature from two rows back: invisible to one row, learnable in a window."""
    frame = panel(n_days=600, signal=0.0)
    lagged = frame.groupby("ticker")["f0"].shift(2)
    frame[TARGET] = 0.01 * lagged.fillna(0.0)
    hp = HParams(
        hidden_size=32, num_layers=1, dropout=0.0, lr=3e-3, batch_size=64, epochs=15, window=4
    )
    scaler = StandardScaler.fit(frame[COLUMNS])
    x, y, index = make_windows(frame, COLUMNS, hp.window, scaler)
    train = frame["date"].to_numpy()[index] < np.datetime64("2022-10-01")
    model = build_model("gru", len(COLUMNS), hp, seed=0)
    train_model(model, x[train], y[train], hp, seed=0)
    zero_mse = np.mean(y[~train] ** 2)
    assert np.mean((predict(model, x[~train]) - y[~train]) ** 2) < 0.1 * zero_mse
    rows = frame.iloc[index]
    ridge = RidgeBaseline(COLUMNS, alpha=0.0).fit(rows[train])
    assert np.mean((ridge.predict(rows[~train]) - y[~train]) ** 2) > 0.9 * zero_mse


def test_training_is_deterministic_given_a_seed() -> None:
    frame = panel(n_days=60)
    x, y = StandardScaler.fit(frame[COLUMNS]).transform(frame[COLUMNS]), frame[TARGET].to_numpy()
    hp = HParams(hidden_size=8, dropout=0.3, batch_size=16, epochs=2)

    def run(seed: int) -> np.ndarray:
        model = build_model("mlp", len(COLUMNS), hp, seed=seed)
        train_model(model, x, y, hp, seed=seed)
        return predict(model, x)

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_fit_epoch_and_evaluate_loss_report_per_sample_means() -> None:
    frame = panel(n_days=50)
    x, y = frame[COLUMNS].to_numpy(np.float32), frame[TARGET].to_numpy(np.float32)
    hp = HParams(hidden_size=8, dropout=0.0, lr=1e-2)
    model, loss_fn = build_model("mlp", len(COLUMNS), hp), nn.MSELoss()
    eval_loader = make_loader(x, y, batch_size=7, shuffle=False)  # uneven last batch
    before = evaluate_loss(model, eval_loader, loss_fn)
    assert before == pytest.approx(float(np.mean((predict(model, x) - y) ** 2)), rel=1e-5)
    optimizer = make_optimizer(model, hp)
    train_loader = make_loader(x, y, batch_size=16, shuffle=True, seed=0)
    for _ in range(20):
        fit_epoch(model, train_loader, optimizer, loss_fn)
    assert evaluate_loss(model, eval_loader, loss_fn) < before
    assert not model.training  # evaluation leaves dropout off
