"""The deployment asset's deploy step pins references that resolve, champion or not (no
cluster: the registry and the rollout are stand-ins)."""

from __future__ import annotations

from typing import Any

import pytest

from ray_app.core.settings import Settings
from ray_app.ops.deploy import deploy_serving
from ray_app.registry import versions
from ray_app.serving import rollout
from ray_app.serving.args import ServeArgs


@pytest.mark.parametrize(("champion", "pinned"), [(3, "3"), (None, "7")])
def test_the_deploy_step_pins_versions_and_serves_the_challenger_before_any_champion(
    monkeypatch: pytest.MonkeyPatch, champion: int | None, pinned: str
) -> None:
    asked: list[rollout.Change] = []

    def fake_rollout(settings: Settings, path: Any, change: rollout.Change, **_: Any) -> Any:
        asked.append(change)
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
    done = deploy_serving(Settings())
    assert asked == [rollout.Change(pins={"champion": pinned, "challenger": "7"})]
    assert done.served == {"champion": pinned, "challenger": "7"}
    assert ("no champion yet" in done.detail) == (champion is None)
