"""The deployment asset's deploy step pins references that resolve, champion or not, and
precomputes the tables of what it pins before it deploys them (no cluster: the registry, the
rollout and the Ray tasks are stand-ins)."""

from __future__ import annotations

from typing import Any

import pytest

from ray_app.core.settings import Settings
from ray_app.ops.deploy import deploy_serving
from ray_app.registry import versions
from ray_app.serving import precompute, rollout
from ray_app.serving.args import ServeArgs


@pytest.mark.parametrize(("champion", "pinned"), [(3, "3"), (None, "7")])
def test_the_deploy_step_pins_versions_and_serves_the_challenger_before_any_champion(
    monkeypatch: pytest.MonkeyPatch, champion: int | None, pinned: str
) -> None:
    asked: list[tuple[rollout.Change, bool]] = []
    precomputed: list[tuple[dict[str, str], bool]] = []

    def fake_rollout(
        settings: Settings, path: Any, change: rollout.Change, apply: bool = True, **_: Any
    ) -> Any:
        asked.append((change, apply))
        args = ServeArgs()
        state = rollout.ServingState(
            args,
            args.ingress_config(),
            {
                s.name: args.variant_config(s).model_copy(update={"ref": change.pins[s.name]})
                for s in args.variants
            },
        )
        return rollout.RolloutResult(state, {}, "cluster", None, True)

    monkeypatch.setattr(versions, "champion_version", lambda settings: champion)
    monkeypatch.setattr(versions, "resolve_version", lambda settings, ref: {"challenger": 7}[ref])
    monkeypatch.setattr(rollout, "rollout", fake_rollout)

    def fake_precompute(args: ServeArgs, refs: dict[str, str], feature_version: Any) -> list[Any]:
        precomputed.append((refs, bool(asked) and not asked[-1][1]))  # planned, not deployed
        return [precompute.Precomputed(("champion",), refs["champion"], 1, "fs", 5, 0.1)]

    monkeypatch.setattr(precompute, "precompute_tables", fake_precompute)
    done = deploy_serving(Settings())
    change = rollout.Change(pins={"champion": pinned, "challenger": "7"})
    assert asked == [(change, False), (change, True)]
    assert precomputed == [({"champion": pinned, "challenger": "7"}, True)]
    assert done.served == {"champion": pinned, "challenger": "7"}
    assert ("no champion yet" in done.detail) == (champion is None)
    assert "table 5 rows in 0.10 s" in done.detail
