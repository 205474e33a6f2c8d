"""Models and baselines: no Ray, scalers fitted on training rows, point-in-time windows, and
models that actually learn a signal that is there."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ray_app.core.settings import Settings, SettingsError, load_settings
from ray_app.data.features import LABEL
from ray_app.models.families import (
    Arrays,
    FitConfig,
    LoopSession,
    TrainedModel,
    check_settings,
    get,
    names,
    search_spaces,
    spec,
)
from ray_app.models.families._torch import LEGACY_WEIGHTS_FILE, TorchFamily, TorchParams, as_arrays
from ray_app.models.families._torch_fit import (
    evaluate_loss,
    fit_epoch,
    make_loader,
    make_optimizer,
    predict,
)
from ray_app.models.families.lightgbm import LightGBMParams
from ray_app.models.networks import (
    PersistenceBaseline,
    RidgeBaseline,
    StandardScaler,
    ZeroBaseline,
    make_windows,
    model_inputs,
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
    frame[LABEL] = signal * x @ weights + rng.normal(0, 0.002, len(frame))
    return frame


def torch_family(kind: str) -> TorchFamily:
    family = get(kind)
    assert isinstance(family, TorchFamily)
    return family


def fit(
    kind: str, frame: pd.DataFrame, train: np.ndarray, params: object, seed: int = 0
) -> tuple[TrainedModel, list[dict[str, float]]]:
    """The family's own fit (what Ray Train, Tune and the refits run) on ``train`` rows, and
    its history; no validation rows, so it runs its full length."""
    family = get(kind)
    window = family.window(params)
    scaler = StandardScaler.fit(frame.loc[train, COLUMNS])
    inputs = model_inputs(frame, COLUMNS, window, scaler)
    take = train[inputs.rows]
    empty = inputs.x[:0]
    arrays = Arrays(inputs.x[take], inputs.y[take], empty, inputs.y[:0], scaler)
    fitted = family.fit(arrays, params, FitConfig(seed=seed), LoopSession())
    model = TrainedModel(
        kind,
        params,
        COLUMNS,
        scaler,
        fitted.weights,
        fitted.best_epoch,
        "f",
        "d",
        seed,  # type: ignore[arg-type]
    )
    return model, fitted.history


def random_model(kind: str, columns: list[str], seed: int = 0, window: int = 3) -> TrainedModel:
    """A ``kind`` model on ``columns`` that predicts something other than zero, made in
    milliseconds: torch weights perturbed at random, or a few trees fitted to random rows;
    for the registry's and serving's tests, which only need every family's predictions."""
    family, rng = get(kind), np.random.default_rng(seed)
    scaler = StandardScaler(rng.normal(size=len(columns)), rng.uniform(0.5, 2, len(columns)))
    if isinstance(family, TorchFamily):
        params = TorchParams(hidden_size=6, num_layers=1, window=window)
        module = family.build(len(columns), params, seed=seed)
        torch.manual_seed(seed)
        weights = {k: v + 0.1 * torch.randn_like(v) for k, v in module.state_dict().items()}
    else:
        params = LightGBMParams(num_boost_round=5, min_data_in_leaf=2)
        x = rng.normal(size=(200, 1, len(columns))).astype(np.float32)
        y = (x[:, 0, 0] * 0.01).astype(np.float32)
        arrays = Arrays(x, y, x[:0], y[:0], scaler)
        weights = family.fit(arrays, params, FitConfig(seed=seed), LoopSession()).weights
    return TrainedModel(kind, params, columns, scaler, weights, 1, "fs", "dv", seed)


def test_models_module_never_imports_ray() -> None:
    code = (
        "import sys, ray_app.models.networks, ray_app.training.splits, ray_app.models.metrics; "
        "from ray_app.models.families import get, names; [get(n) for n in names()]; "
        "leaked = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')); "
        "print(leaked); sys.exit(1 if leaked else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_family_table_lists_every_family_module() -> None:
    assert names() == ["gru", "lightgbm", "mlp"]
    assert [get(n).name for n in names()] == names()
    assert [
        get(n).window(get(n).params({"window": 7} if n != "lightgbm" else {})) for n in names()
    ] == [7, 1, 1]
    with pytest.raises(SettingsError, match=r"unknown model family 'lstm'.*gru, lightgbm, mlp"):
        get("lstm")


def test_hparams_are_typed_and_closed() -> None:
    mlp, lgbm = get("mlp"), get("lightgbm")
    assert isinstance(mlp.params(), TorchParams) and mlp.params().window == 20
    assert isinstance(lgbm.params(), LightGBMParams)
    with pytest.raises(SettingsError, match="hiden_size: unknown hyperparameter"):
        mlp.params({"hiden_size": 32})
    with pytest.raises(SettingsError, match="dropout"):
        mlp.params({"dropout": 1.0})
    with pytest.raises(SettingsError, match="lr"):
        mlp.params({"lr": 0})
    with pytest.raises(SettingsError, match="num_leaves"):
        lgbm.params({"num_leaves": 1})


@pytest.mark.parametrize(("kind", "shape"), [("mlp", (7, 1, 4)), ("gru", (7, 5, 4))])
def test_build_model_is_seeded_and_predicts_one_value_per_input(kind: str, shape: tuple) -> None:
    hp, family = TorchParams(hidden_size=8, num_layers=2), torch_family(kind)
    state = torch.random.get_rng_state()
    a, b = family.build(4, hp, seed=1), family.build(4, hp, seed=1)
    c = family.build(4, hp, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    params = [torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c)]
    assert torch.equal(params[0], params[1]) and not torch.equal(params[0], params[2])
    out = predict(a, np.random.default_rng(0).normal(size=shape))
    assert out.shape == (7,) and out.dtype == np.float64
    np.testing.assert_array_equal(out, 0.0)  # untrained, it is the zero forecast
    with pytest.raises(ValueError, match="n_features"):
        family.build(0, hp)


@pytest.mark.parametrize(
    ("kind", "layers", "window"), [("mlp", 1, 1), ("mlp", 3, 1), ("gru", 1, 6), ("gru", 2, 6)]
)
def test_the_numpy_forward_computes_what_the_torch_module_does(
    kind: str, layers: int, window: int
) -> None:
    """Serving predicts through the family's NumPy ``forward``: it must equal the trained
    module's output (eval mode) on random weights, every layer and gate exercised."""
    hp = TorchParams(hidden_size=16, num_layers=layers, dropout=0.3, window=window)
    family = torch_family(kind)
    module = family.build(5, hp, seed=3)
    torch.manual_seed(0)
    module.load_state_dict({k: torch.randn_like(v) for k, v in module.state_dict().items()})
    x = np.random.default_rng(1).normal(size=(64, window, 5)).astype(np.float32)
    expected = predict(module, x)
    got = family.forward(as_arrays(module.state_dict()), hp, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(expected).mean() > 0.1  # not the zero-started head


def test_a_version_saved_as_weights_pt_still_loads(tmp_path: Path) -> None:
    """Versions registered before ``weights.npz`` hold torch's ``weights.pt``."""
    frame = panel(n_days=60)
    model, _ = fit("mlp", frame, np.ones(len(frame), bool), TorchParams(hidden_size=4, epochs=1))
    model.save(tmp_path)
    state = {k: torch.from_numpy(v) for k, v in as_arrays(model.weights).items()}
    torch.save(state, tmp_path / LEGACY_WEIGHTS_FILE)
    (tmp_path / "weights.npz").unlink()
    loaded = TrainedModel.load(tmp_path)
    pd.testing.assert_frame_equal(loaded.predict_frame(frame), model.predict_frame(frame))


def test_serving_a_torch_family_never_imports_torch(tmp_path: Path) -> None:
    """What a variant replica does on a restart (its module, then a model from the node's
    cache, then a prediction), in a fresh process: torch stays out of it."""
    frame = panel(n_days=30)
    model, _ = fit(
        "gru", frame, np.ones(len(frame), bool), TorchParams(hidden_size=4, epochs=1, window=3)
    )
    model.save(tmp_path)
    code = (
        "import sys, numpy as np; import ray_app.serving.variant; "
        "from ray_app.models.families import TrainedModel; "
        f"m = TrainedModel.load(__import__('pathlib').Path({str(tmp_path)!r})); "
        "print(m.predictor()(np.zeros((2, 3, len(m.columns)), np.float32)).shape, "
        "'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["(2,)", "False"], out.stderr


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
    wild.loc[~train, LABEL] = 1.0
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
    frame[LABEL] = rng.normal(size=12)
    design = np.column_stack([np.ones(12), frame[COLUMNS[:3]].to_numpy()])
    beta = np.linalg.lstsq(design, frame[LABEL].to_numpy(), rcond=None)[0]
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
    frame[LABEL] = np.arange(len(frame), dtype=float)
    x, y, index = make_windows(frame, ["tid", "day"], window=5)
    counts = frame.groupby("ticker").size()
    assert len(index) == sum(max(0, n - 4) for n in counts)  # BBB's 4 rows make no window
    assert np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(y, frame[LABEL].to_numpy()[index])
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
    hp = TorchParams(hidden_size=32, num_layers=2, dropout=0.0, lr=3e-3, batch_size=64, epochs=6)
    model, history = fit("mlp", frame, train, hp)
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < losses[0]
    test = frame[~train]
    y = test[LABEL].to_numpy()
    test_mse = np.mean((model.predict_frame(test)["pred"].to_numpy() - y) ** 2)
    assert test_mse < 0.1 * np.mean(y**2)


def test_lightgbm_learns_a_nonlinear_signal_better_than_zero_and_ridge() -> None:
    """An interaction of two features: trees find it, a linear model cannot."""
    frame = panel(n_days=800, signal=0.0)
    frame[LABEL] = 0.01 * np.sign(frame["f0"] * frame["f1"]) + 0.002 * frame["f2"]
    train = (frame["date"] < pd.Timestamp("2023-06-01")).to_numpy()
    params = LightGBMParams(num_boost_round=150, min_data_in_leaf=20, learning_rate=0.1)
    model, _ = fit("lightgbm", frame, train, params)
    assert model.best_epoch == 150  # no validation rows: the full length
    test = frame[~train]
    y = test[LABEL].to_numpy()
    mse = np.mean((model.predict_frame(test)["pred"].to_numpy() - y) ** 2)
    ridge = RidgeBaseline(COLUMNS, alpha=1.0).fit(frame[train])
    assert mse < 0.2 * np.mean(y**2)
    assert mse < 0.3 * np.mean((ridge.predict(test) - y) ** 2)


def test_lightgbm_stops_early_on_validation_and_reports_every_family_metric() -> None:
    frame = panel(n_days=400)
    dates = frame["date"].to_numpy()
    train, val = dates < np.datetime64("2022-01-01"), dates >= np.datetime64("2022-01-01")
    scaler = StandardScaler.fit(frame.loc[train, COLUMNS])
    inputs = model_inputs(frame, COLUMNS, 1, scaler)
    arrays = Arrays(inputs.x[train], inputs.y[train], inputs.x[val], inputs.y[val], scaler)
    reports: list[dict] = []

    class Recorder(LoopSession):
        def report(self, metrics: dict[str, float], state: dict | None) -> None:
            reports.append(metrics)

    params = LightGBMParams(
        num_boost_round=2000, learning_rate=0.3, early_stopping_rounds=10, report_every=5
    )
    fitted = get("lightgbm").fit(arrays, params, FitConfig(), Recorder())
    assert fitted.best_epoch < 2000 and reports[-1]["epoch"] < 2000  # stopped early
    assert set(reports[0]) == {"epoch", "train_loss", "val_loss", "best_val_loss", "best_epoch"}
    assert [r["epoch"] for r in reports[:-1]] == list(range(5, 5 * len(reports), 5))
    assert reports[-1]["best_epoch"] == fitted.best_epoch
    refit = get("lightgbm").fixed_length(params, fitted.best_epoch)
    assert refit.num_boost_round == fitted.best_epoch  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["mlp", "gru", "lightgbm"])
def test_every_family_saves_data_not_pickles_and_loads_the_same_predictions(
    kind: str, tmp_path: Path
) -> None:
    frame = panel(n_days=120)
    train = (frame["date"] < pd.Timestamp("2021-05-01")).to_numpy()
    params = get(kind).params(
        {"num_boost_round": 20, "min_data_in_leaf": 5}
        if kind == "lightgbm"
        else {"hidden_size": 4, "epochs": 1, "window": 3}
    )
    model, _ = fit(kind, frame, train, params)
    model.save(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["model.json", "model.txt" if kind == "lightgbm" else "weights.npz"]
    if kind == "lightgbm":
        assert (tmp_path / "model.txt").read_text().startswith("tree\n")  # LightGBM's text
    loaded = TrainedModel.load(tmp_path)
    assert loaded.kind == kind and loaded.hparams == params and loaded.window == model.window
    expected = model.predict_frame(frame)
    assert len(expected) == len(frame) - (model.window - 1) * 3
    pd.testing.assert_frame_equal(loaded.predict_frame(frame), expected)
    # The content digest survives the round trip, and tells another fit apart.
    assert loaded.digest() == model.digest()
    other, _ = fit(kind, frame, ~train, params)
    assert other.digest() != model.digest()


def test_gru_uses_the_past_rows_in_its_window() -> None:
    """The target is a feature from two rows back: invisible to one row, learnable in a window."""
    frame = panel(n_days=600, signal=0.0)
    lagged = frame.groupby("ticker")["f0"].shift(2)
    frame[LABEL] = 0.01 * lagged.fillna(0.0)
    hp = TorchParams(
        hidden_size=32, num_layers=1, dropout=0.0, lr=3e-3, batch_size=64, epochs=15, window=4
    )
    train = (frame["date"] < pd.Timestamp("2022-10-01")).to_numpy()
    model, _ = fit("gru", frame, train, hp)
    preds = model.predict_frame(frame).merge(frame, on=["date", "ticker"])
    test = preds[preds["date"] >= pd.Timestamp("2022-10-01")]
    y = test[LABEL].to_numpy()
    zero_mse = np.mean(y**2)
    assert np.mean((test["pred"].to_numpy() - y) ** 2) < 0.1 * zero_mse
    ridge = RidgeBaseline(COLUMNS, alpha=0.0).fit(frame[train])
    assert np.mean((ridge.predict(test) - y) ** 2) > 0.9 * zero_mse


def test_training_is_deterministic_given_a_seed() -> None:
    frame = panel(n_days=60)
    train = np.ones(len(frame), bool)
    hp = TorchParams(hidden_size=8, dropout=0.3, batch_size=16, epochs=2)

    def run(seed: int) -> np.ndarray:
        model, _ = fit("mlp", frame, train, hp, seed=seed)
        return model.predict_frame(frame)["pred"].to_numpy()

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_fit_epoch_and_evaluate_loss_report_per_sample_means() -> None:
    frame = panel(n_days=50)
    x, y = frame[COLUMNS].to_numpy(np.float32), frame[LABEL].to_numpy(np.float32)
    hp = TorchParams(hidden_size=8, dropout=0.0, lr=1e-2)
    model, loss_fn = torch_family("mlp").build(len(COLUMNS), hp), nn.MSELoss()
    eval_loader = make_loader(x, y, batch_size=7, shuffle=False)  # uneven last batch
    before = evaluate_loss(model, eval_loader, loss_fn)
    assert before == pytest.approx(float(np.mean((predict(model, x) - y) ** 2)), rel=1e-5)
    optimizer = make_optimizer(model, hp)
    train_loader = make_loader(x, y, batch_size=16, shuffle=True, seed=0)
    for _ in range(20):
        fit_epoch(model, train_loader, optimizer, loss_fn)
    assert evaluate_loss(model, eval_loader, loss_fn) < before
    assert not model.training  # evaluation leaves dropout off


def test_settings_name_families_and_hyperparameters_from_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(
        train={"model": "lightgbm", "hparams": {"num_leaves": 7}},
        tune={
            "families": ["mlp", "lightgbm"],
            "search_space": {"lightgbm": {"num_leaves": {"type": "choice", "values": [7, 15]}}},
        },
    )
    check_settings(settings)
    assert spec(settings).hparams == LightGBMParams(num_leaves=7)
    assert spec(settings, "mlp").hparams == TorchParams()  # not train.model: its defaults
    spaces = search_spaces(settings)
    assert list(spaces) == ["mlp", "lightgbm"] and spaces["mlp"] == get("mlp").default_space
    assert list(spaces["lightgbm"]) == ["num_leaves"]
    bad = {
        "train": ({"model": "lstm"}, {}, "unknown model family 'lstm'"),
        "hparams": ({"model": "lightgbm", "hparams": {"epochs": 3}}, {}, "epochs: unknown"),
        "families": ({}, {"families": ["xgb"]}, "tune.families.*unknown model family 'xgb'"),
        "space": (
            {},
            {"search_space": {"mlp": {"lrate": {"type": "uniform", "low": 0, "high": 1}}}},
            "tune.search_space.mlp: unknown hyperparameter.*lrate",
        ),
    }
    for train, tune, message in bad.values():
        with pytest.raises(SettingsError, match=message):
            check_settings(Settings(train=train, tune=tune))
    monkeypatch.setenv("RAY_APP_TRAIN__HPARAMS__EPOCHS", "3")
    assert spec(load_settings()).hparams.epochs == 3  # type: ignore[attr-defined]
    assert spec(load_settings(train__hparams__epochs=4)).hparams.epochs == 4  # type: ignore[attr-defined]
