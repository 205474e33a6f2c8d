"""ray_app.serving.gitops: serving changes written into a git checkout and committed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ray_app.serving import gitops

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = {
    "Ingress": {
        "weights": {"champion": 0.9, "challenger": 0.1},
        "shadow": None,
        "feature_version": None,
    }
}


def git(checkout: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    """A git repository holding the project's serve_config.yaml and its chart copy."""
    root = tmp_path / "repo"
    for path in (gitops.SERVE_CONFIG, gitops.CHART_SERVE_CONFIG):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / gitops.SERVE_CONFIG, root / path)
    (root / "other.txt").write_text("untouched\n")
    git(root, "init", "--quiet")
    git(root, "config", "user.email", "ci@example.com")
    git(root, "config", "user.name", "CI")
    git(root, "add", ".")
    git(root, "commit", "--quiet", "-m", "start")
    return root


def deployments(path: Path) -> dict[str, dict[str, object]]:
    config = yaml.safe_load(path.read_text())
    (app,) = [a for a in config["applications"] if a["name"] == gitops.APPLICATION]
    return {d["name"]: d for d in app["deployments"]}


def test_the_repository_chart_copy_is_current() -> None:
    assert gitops.chart_copy_is_current(REPO)


def test_change_is_written_to_both_files_and_committed(checkout: Path) -> None:
    before = (checkout / gitops.SERVE_CONFIG).read_text()
    (checkout / "other.txt").write_text("changed, not staged\n")
    result = gitops.apply_serving_change(checkout, WEIGHTS, commit=True, message="90/10")
    assert result.changed and result.commit == git(checkout, "rev-parse", "HEAD")
    assert git(checkout, "log", "-1", "--format=%s") == "90/10"
    changed = git(checkout, "show", "--name-only", "--format=", "HEAD").splitlines()
    assert sorted(changed) == sorted(p.as_posix() for p in result.paths)
    assert git(checkout, "status", "--porcelain") == "M other.txt"
    source, copy = checkout / gitops.SERVE_CONFIG, checkout / gitops.CHART_SERVE_CONFIG
    assert source.read_bytes() == copy.read_bytes()
    assert deployments(source)["Ingress"]["user_config"] == WEIGHTS["Ingress"]
    # Only user_config changed: the comments, the args and the other deployments stay.
    assert source.read_text().startswith(gitops.split_header(before)[0])
    old, new = yaml.safe_load(before), yaml.safe_load(source.read_text())
    assert old["applications"][0]["args"] == new["applications"][0]["args"]
    assert (
        deployments(source)["champion"]["user_config"]
        == (old["applications"][0]["deployments"][1]["user_config"])
    )


def test_same_state_writes_and_commits_nothing(checkout: Path) -> None:
    current = deployments(checkout / gitops.SERVE_CONFIG)
    same = {name: d["user_config"] for name, d in current.items()}
    head = git(checkout, "rev-parse", "HEAD")
    result = gitops.apply_serving_change(checkout, same, commit=True)
    assert not result.changed and result.commit is None
    assert git(checkout, "rev-parse", "HEAD") == head
    assert git(checkout, "status", "--porcelain") == ""


def test_a_stale_chart_copy_is_refreshed_without_commit(checkout: Path) -> None:
    copy = checkout / gitops.CHART_SERVE_CONFIG
    copy.write_text("stale: true\n")
    assert not gitops.chart_copy_is_current(checkout)
    result = gitops.apply_serving_change(checkout, {})
    assert result.changed and result.commit is None
    assert gitops.chart_copy_is_current(checkout)


def test_unknown_deployment_is_refused_and_nothing_written(checkout: Path) -> None:
    before = (checkout / gitops.SERVE_CONFIG).read_bytes()
    with pytest.raises(gitops.GitOpsError, match="no deployment 'Ingres'"):
        gitops.apply_serving_change(checkout, {"Ingres": {}}, commit=True)
    assert (checkout / gitops.SERVE_CONFIG).read_bytes() == before


def test_commit_outside_a_git_checkout_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / gitops.SERVE_CONFIG).write_bytes((REPO / gitops.SERVE_CONFIG).read_bytes())
    with pytest.raises(gitops.GitOpsError, match="git rev-parse failed") as info:
        gitops.apply_serving_change(tmp_path, WEIGHTS, commit=True)
    assert "\n" not in str(info.value)
    assert not (tmp_path / gitops.CHART_SERVE_CONFIG).exists()


def test_missing_serve_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(gitops.GitOpsError, match="not a ray-app checkout"):
        gitops.apply_serving_change(tmp_path, WEIGHTS)


@pytest.mark.parametrize(
    ("text", "header"),
    [("# a\n\n# b\nx: 1\n", "# a\n\n# b\n"), ("x: 1\n", ""), ("# only\n", "# only\n")],
)
def test_split_header(text: str, header: str) -> None:
    assert gitops.split_header(text) == (header, text[len(header) :])


def test_a_rollout_with_gitops_commits_instead_of_deploying(
    checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ray-app rollout --gitops CHECKOUT``: the change starts from the checkout's desired
    config, lands in one commit of both files, talks to no cluster, and is audited."""
    from ray_app.core.settings import Settings
    from ray_app.registry.audit import audit_log
    from ray_app.serving import rollout

    monkeypatch.setattr(rollout, "_resolver", lambda settings: lambda ref: 1)  # registry: elsewhere
    monkeypatch.setattr(rollout, "running_config", pytest.fail)  # must not ask a cluster
    monkeypatch.setattr(rollout, "deploy", pytest.fail)  # nor serve deploy
    settings = Settings(data_root=str(tmp_path / "data"))
    change = rollout.Change(challenger_weight=0.2, shadow="challenger", shadow_fraction=0.5)
    before = git(checkout, "rev-parse", "HEAD")
    result = rollout.rollout(
        settings, Path("unused.yaml"), change, actor="alice", reason="canary", gitops=checkout
    )
    assert result.deployed and result.source == str(checkout)
    assert git(checkout, "rev-parse", "HEAD~1") == before
    assert git(checkout, "log", "-1", "--format=%s") == "rollout: canary"
    ingress = deployments(checkout / gitops.SERVE_CONFIG)["Ingress"]["user_config"]
    assert ingress["weights"] == {"champion": 0.8, "challenger": 0.2}
    assert ingress["shadow"] == {"variant": "challenger", "fraction": 0.5}
    assert gitops.chart_copy_is_current(checkout)
    (entry,) = audit_log(settings)
    assert (entry["event"], entry["actor"], entry["reason"]) == ("rollout", "alice", "canary")
    assert entry["target"] == f"git commit in {checkout}" and entry["weights"] == ingress["weights"]
