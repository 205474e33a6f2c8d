"""terraform/: static checks with python-hcl2 (no terraform binary, no providers, no network).

A light `terraform validate`: every module has the terraform-aws-modules layout, every variable
and output is typed and described, providers and registry modules are pinned, references to
variables and child modules resolve, and versions agree with the rest of the repository.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra import project

pytestmark = pytest.mark.infra

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 not installed (pip install python-hcl2)")

MODULE_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md")
MODULE_DIRS = sorted(
    {p.parent for p in project.TERRAFORM.rglob("*.tf") if ".terraform" not in p.parts}
)
# Provider of a resource/data type: its name up to the first underscore.
META_ARGS = {"source", "version", "count", "for_each", "depends_on", "providers"}


def _unquote(value: Any) -> Any:
    """python-hcl2 < 8 keeps no quotes, >= 8 does unless told: normalise both."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    return value


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    with path.open() as fh:
        options = getattr(hcl2, "SerializationOptions", None)
        if options is not None:
            opts = options(strip_string_quotes=True, with_comments=False, explicit_blocks=False)
            return _unquote(hcl2.load(fh, serialization_options=opts))
        return _unquote(hcl2.load(fh))


def blocks(module: Path, kind: str) -> dict[str, Any]:
    """All ``kind`` blocks of a module (variable, output, module, ...) by name."""
    found: dict[str, Any] = {}
    for path in sorted(module.glob("*.tf")):
        for block in parse(path).get(kind, []):
            for name, body in block.items():
                assert name not in found, f"{module}: {kind} {name!r} declared twice"
                found[name] = body
    return found


def typed_blocks(module: Path, kind: str) -> dict[str, dict[str, Any]]:
    """resource/data blocks: {"aws_s3_bucket.data": body}."""
    found = {}
    for path in sorted(module.glob("*.tf")):
        for block in parse(path).get(kind, []):
            for type_, named in block.items():
                for name, body in named.items():
                    found[f"{type_}.{name}"] = body
    return found


def module_text(module: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(module.glob("*.tf")))


def required_providers(module: Path) -> dict[str, dict[str, str]]:
    providers: dict[str, dict[str, str]] = {}
    for block in parse(module / "versions.tf").get("terraform", []):
        for entry in block.get("required_providers", []):
            providers.update(entry)
    return providers


@pytest.fixture(params=MODULE_DIRS, ids=lambda p: p.relative_to(project.REPO).as_posix())
def module(request: pytest.FixtureRequest) -> Path:
    return request.param


def test_root_and_submodules_found() -> None:
    names = {p.relative_to(project.TERRAFORM).as_posix() for p in MODULE_DIRS}
    assert names == {".", "modules/redis", "modules/ray-platform", "modules/mlflow-db"}


def test_module_has_the_five_files(module: Path) -> None:
    missing = [f for f in MODULE_FILES if not (module / f).is_file()]
    assert not missing, f"{module.relative_to(project.REPO)} lacks {missing}"


def test_every_file_parses(module: Path) -> None:
    for path in sorted(module.glob("*.tf")):
        assert isinstance(parse(path), dict), path


def test_variables_are_typed_and_described(module: Path) -> None:
    variables = blocks(module, "variable")
    assert variables, "a module without inputs? declare them in variables.tf"
    for name, body in variables.items():
        assert body.get("type"), f"variable {name} has no type"
        assert str(body.get("description", "")).strip(), f"variable {name} has no description"
    declared_in = {n for b in parse(module / "variables.tf").get("variable", []) for n in b}
    assert declared_in == set(variables), "declare variables in variables.tf only"


def test_outputs_are_described(module: Path) -> None:
    outputs = blocks(module, "output")
    assert outputs, "no outputs"
    for name, body in outputs.items():
        assert str(body.get("description", "")).strip(), f"output {name} has no description"
    declared_in = {n for b in parse(module / "outputs.tf").get("output", []) for n in b}
    assert declared_in == set(outputs), "declare outputs in outputs.tf only"


def _is_pinned(constraint: str) -> bool:
    """An upper bound: "~> 6.13", "= 1.2.3", "1.2.3" or ">= 1, < 2"; not a bare ">= 1"."""
    parts = [c.strip() for c in constraint.split(",") if c.strip()]
    return any(re.match(r"^(~>|=|<=?|\d)", p) for p in parts)


def test_pinned_versions_helper() -> None:
    assert _is_pinned("~> 6.13") and _is_pinned(">= 1.0, < 2.0") and _is_pinned("1.7.0")
    assert not _is_pinned(">= 6.0") and not _is_pinned("")


def test_terraform_and_providers_are_pinned(module: Path) -> None:
    terraform = parse(module / "versions.tf").get("terraform", [])
    assert terraform, "versions.tf has no terraform block"
    assert terraform[0].get("required_version", "").startswith(">="), "set required_version"
    providers = required_providers(module)
    assert providers, "no required_providers"
    for name, spec in providers.items():
        assert spec.get("source", "").startswith("hashicorp/") or "/" in spec.get("source", "")
        assert _is_pinned(spec.get("version", "")), f"provider {name}: {spec.get('version')!r}"


def test_every_provider_used_is_required(module: Path) -> None:
    used = {
        key.split("_", 1)[0] for kind in ("resource", "data") for key in typed_blocks(module, kind)
    }
    used |= {name for block in parse(module / "main.tf").get("provider", []) for name in block}
    assert used <= set(required_providers(module)), (
        f"providers used but not in required_providers: {used - set(required_providers(module))}"
    )


def test_registry_modules_are_pinned_and_local_modules_exist(module: Path) -> None:
    for name, body in blocks(module, "module").items():
        source = body["source"]
        if source.startswith("./") or source.startswith("../"):
            assert (module / source / "main.tf").is_file(), f"module {name}: {source} missing"
            assert "version" not in body
        else:
            assert _is_pinned(body.get("version", "")), f"module {name} ({source}) unpinned"


def test_variable_references_resolve_and_every_variable_is_used(module: Path) -> None:
    text = module_text(module)
    referenced = set(re.findall(r"\bvar\.([A-Za-z_][\w-]*)", text))
    declared = set(blocks(module, "variable"))
    assert referenced <= declared, f"undeclared variables: {referenced - declared}"
    assert declared <= referenced, f"unused variables: {declared - referenced}"


def test_module_calls_match_the_child_modules(module: Path) -> None:
    for name, body in blocks(module, "module").items():
        source = body["source"]
        if not source.startswith("."):
            continue
        child = (module / source).resolve()
        child_vars = blocks(child, "variable")
        given = set(body) - META_ARGS
        required = {v for v, b in child_vars.items() if "default" not in b}
        assert given <= set(child_vars), f"module {name}: unknown inputs {given - set(child_vars)}"
        assert required <= given, f"module {name}: missing inputs {required - given}"
        child_outputs = set(blocks(child, "output"))
        used = set(re.findall(rf"\bmodule\.{name}(?:\[[^\]]*\])?\.(\w+)", module_text(module)))
        assert used <= child_outputs, f"module {name}: no such outputs {used - child_outputs}"


# --- Agreement with the rest of the repository --------------------------------------------------


def _default(module: Path, variable: str) -> Any:
    return blocks(module, "variable")[variable]["default"]


def test_kuberay_chart_matches_the_crds_the_manifests_are_checked_against() -> None:
    if not project.KUBERAY_VERSION_FILE.is_file():
        pytest.skip(f"{project.KUBERAY_VERSION_FILE} not found (shared/schemas absent)")
    match = re.search(r"kuberay v(\d+\.\d+\.\d+)", project.KUBERAY_VERSION_FILE.read_text())
    assert match, "cannot read the KubeRay version of the CRDs"
    for path in (project.TERRAFORM, project.TERRAFORM / "modules" / "ray-platform"):
        assert _default(path, "kuberay_operator_version") == match.group(1), path


def test_kubernetes_version_is_the_one_manifests_are_validated_against() -> None:
    assert _default(project.TERRAFORM, "kubernetes_version") == project.KUBERNETES_VERSION


def test_namespace_and_service_account_match_the_manifest(ray_cluster: dict[str, Any]) -> None:
    assert _default(project.TERRAFORM, "namespace") == ray_cluster["metadata"]["namespace"]
    head = ray_cluster["spec"]["headGroupSpec"]["template"]["spec"]
    locals_ = {
        k: v for b in parse(project.TERRAFORM / "main.tf").get("locals", []) for k, v in b.items()
    }
    assert locals_["ray_service_account"] == head["serviceAccountName"]


def test_objects_the_manifest_expects_are_created(ray_cluster: dict[str, Any]) -> None:
    """The ConfigMap, Secrets and Redis Service cluster/ray-cluster.yaml names are made here."""
    platform = project.TERRAFORM / "modules" / "ray-platform"
    made = {
        (type_.removeprefix("kubernetes_").removesuffix("_v1"), body["metadata"][0]["name"])
        for type_name, body in typed_blocks(platform, "resource").items()
        if (type_ := type_name.split(".")[0]).startswith("kubernetes_")
        and isinstance(body.get("metadata"), list)
    }
    spec = ray_cluster["spec"]
    ft = spec["gcsFaultToleranceOptions"]
    expected = {
        ("secret", ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]),
        ("service", re.sub(r"^rediss?://", "", ft["redisAddress"]).split(":")[0]),
    }
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    for source in head.get("envFrom", []):
        if "configMapRef" in source:
            expected.add(("config_map", source["configMapRef"]["name"]))
        if "secretRef" in source:
            expected.add(("secret", source["secretRef"]["name"]))
    assert expected <= made, f"not created by terraform/modules/ray-platform: {expected - made}"


def test_no_ray_app_secret_is_handed_to_the_env_backend() -> None:
    """Every Ray pod reads ray-app's secrets with the file backend from the mounted Secret
    ray-app-secrets (test_chart.py), so a RAY_APP_SECRET_* variable made here would be ignored:
    the Redis password reaches ray-app through Vault instead."""
    keys = {
        f"{name}: {key}"
        for name, body in typed_blocks(PLATFORM, "resource").items()
        if name.startswith("kubernetes_secret_v1.")
        for key in body["data"]
    }
    assert any(k.endswith(": RAY_APP_ONLINE__REDIS_URL") for k in keys), keys
    assert not [k for k in keys if ": RAY_APP_SECRET_" in k]


# --- State, the API endpoint, the operator's feature gates --------------------------------------

PLATFORM = project.TERRAFORM / "modules" / "ray-platform"
KUBERAY_VALUES = PLATFORM / "kuberay-values.yaml"


def test_state_is_kept_in_s3_encrypted_and_locked() -> None:
    terraform = parse(project.TERRAFORM / "versions.tf")["terraform"][0]
    backends = {name: body for b in terraform.get("backend", []) for name, body in b.items()}
    assert set(backends) == {"s3"}, f"state backend: {set(backends) or 'local'}"
    s3 = backends["s3"]
    assert s3.get("encrypt") is True and s3.get("key")
    # Native S3 locking (a .tflock object next to the state); DynamoDB locking is deprecated.
    assert s3.get("use_lockfile") is True and "dynamodb_table" not in s3
    version = re.match(r">=\s*(\d+)\.(\d+)", terraform["required_version"])
    assert version and (int(version[1]), int(version[2])) >= (1, 10), "use_lockfile: >= 1.10"


def test_api_endpoint_cidrs_are_required_and_passed_to_eks() -> None:
    variable = blocks(project.TERRAFORM, "variable")["cluster_endpoint_public_access_cidrs"]
    assert "default" not in variable, "no default: an open API endpoint is never implied"
    eks = blocks(project.TERRAFORM, "module")["eks"]
    assert eks["endpoint_public_access_cidrs"] == "${var.cluster_endpoint_public_access_cidrs}"


def _plan_variables(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`terraform plan` of the root module's variables alone: evaluates their validation rules
    offline (no providers, no resources, no backend)."""
    terraform = project.find_tool("terraform")
    if terraform is None:
        pytest.skip("terraform not on PATH")
    shutil.copy(project.TERRAFORM / "variables.tf", tmp_path)
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_CLI_CONFIG_FILE": os.devnull}
    run = functools.partial(
        subprocess.run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    init = run([terraform, "init", "-input=false", "-no-color"])
    assert init.returncode == 0, init.stderr
    return run([terraform, "plan", "-input=false", "-no-color", "-refresh=false", *args])  # type: ignore[no-any-return]


def _cidrs(value: str, *more: str) -> list[str]:
    return ["-var", f"cluster_endpoint_public_access_cidrs={value}", *more]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "has no default value"),
        (_cidrs('["0.0.0.0/0"]'), "may not open the API to every address"),
        (_cidrs('["10.0.0.0/8", "::/0"]'), "may not open the API to every address"),
        (_cidrs("[]"), "at least one while the endpoint is public"),
        (_cidrs('["my-office"]'), "must hold CIDR blocks"),
        (_cidrs('["203.0.113.0/24"]'), None),
        (_cidrs("[]", "-var", "cluster_endpoint_public_access=false"), None),
    ],
)
def test_api_endpoint_cidrs_validation(tmp_path: Path, args: list[str], error: str | None) -> None:
    plan = _plan_variables(tmp_path, *args)
    out = " ".join((plan.stdout + plan.stderr).split())
    if error is None:
        assert plan.returncode == 0, out
    else:
        assert plan.returncode != 0 and error in out, out


def _feature_gates(values: dict[str, Any]) -> dict[str, bool]:
    return {g["name"]: g["enabled"] for g in values["featureGates"]}


def test_kuberay_operator_runs_the_raycronjob_controller() -> None:
    """The daily pipeline is a RayCronJob: alpha in KubeRay v1.7.0, its controller off unless
    the operator's RayCronJob feature gate is on."""
    release = typed_blocks(PLATFORM, "resource")["helm_release.kuberay_operator"]
    assert release["values"] == ['${file("${path.module}/kuberay-values.yaml")}']
    gates = _feature_gates(yaml.safe_load(KUBERAY_VALUES.read_text()))
    cron_jobs = [
        path.name
        for path in sorted((project.CHART / "templates").glob("*.yaml"))
        if "kind: RayCronJob" in path.read_text()
    ]
    assert cron_jobs, "no RayCronJob in the chart any more? then drop the gate"
    assert gates.get("RayCronJob") is True, f"{cron_jobs} would never be scheduled"
    # Turning a gate on must not turn the chart's defaults off: featureGates is one list.
    assert gates.get("RayJobDeletionPolicy") is True, "deletionRules of the RayCronJob"


def test_cluster_readme_installs_the_same_operator_values() -> None:
    """cluster/README.md's `helm install` values (for clusters not made by terraform/) are the
    ones terraform/ gives the helm_release."""
    readme = (project.CLUSTER / "README.md").read_text()
    match = re.search(r"<<'VALUES'\n(.*?)\nVALUES\n", readme, re.S)
    assert match, "cluster/README.md has no kuberay-values.yaml heredoc"
    assert _feature_gates(yaml.safe_load(match[1])) == _feature_gates(
        yaml.safe_load(KUBERAY_VALUES.read_text())
    )


def test_mlflow_backend_store_secret_is_made_from_the_database() -> None:
    root = blocks(project.TERRAFORM, "module")
    assert root["ray_platform"]["mlflow_backend_store_uri"].startswith(
        "${var.enable_mlflow_db ? module.mlflow_db[0].backend_store_uri"
    )
    secret = typed_blocks(PLATFORM, "resource")["kubernetes_secret_v1.mlflow_db"]
    assert secret["metadata"][0]["name"] == "ray-app-mlflow-db"
    assert set(secret["data"]) == {"MLFLOW_BACKEND_STORE_URI"}
    uri = blocks(project.TERRAFORM / "modules" / "mlflow-db", "output")["backend_store_uri"]
    assert uri["sensitive"] is True and "sslmode=require" in uri["value"]


# --- checkov ------------------------------------------------------------------------------------

CHECKOV = project.REPO / ".tools" / "checkov" / "bin" / "checkov"
# A waiver: `#checkov:skip=CKV_AWS_18:why it does not apply here`.
WAIVER = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")


def checkov(directory: Path) -> dict[str, Any]:
    """checkov's report on a Terraform folder, offline (no Prisma Cloud, no module downloads:
    the registry modules' insides are not scanned, only how they are called)."""
    if not CHECKOV.is_file():
        pytest.skip(f"{CHECKOV} not installed: make tools-checkov")
    run = subprocess.run(
        [CHECKOV, "-d", directory, "--framework", "terraform", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert run.returncode in (0, 1), run.stderr[-2000:]
    report = json.loads(run.stdout)
    reports = report if isinstance(report, list) else [report]
    (terraform,) = [r for r in reports if r["check_type"] == "terraform"]
    return terraform  # type: ignore[no-any-return]


def unreasoned_waivers(text: str) -> list[str]:
    """The checks a file waives without saying why (a reason of fewer than three words)."""
    return [m[1] for m in WAIVER.finditer(text) if len((m[2] or "").split()) < 3]


def test_unreasoned_waivers_helper() -> None:
    assert unreasoned_waivers("#checkov:skip=CKV_AWS_18:Audited with CloudTrail data events") == []
    assert unreasoned_waivers("#checkov:skip=CKV_AWS_18\n# checkov:skip=CKV_TF_1:pinned") == [
        "CKV_AWS_18",
        "CKV_TF_1",
    ]


def test_checkov_passes_and_every_waiver_says_why() -> None:
    report = checkov(project.TERRAFORM)
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]}): "
        f"{c['check_name']}"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "fix, or waive inline with a reason:\n" + "\n".join(failed)
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    assert report["summary"]["passed"] > 100, "checkov scanned next to nothing"
    texts = {p.relative_to(project.REPO).as_posix(): module_text(p) for p in MODULE_DIRS}
    unreasoned = {path: bad for path, text in texts.items() if (bad := unreasoned_waivers(text))}
    assert not unreasoned, f"waivers without a reason: {unreasoned}"
    written = {m[1] for text in texts.values() for m in WAIVER.finditer(text)}
    applied = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert applied == written, "a waiver that waives nothing: remove it"


def test_checkov_fails_an_open_database(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        'resource "aws_db_instance" "open" {\n'
        '  engine              = "postgres"\n'
        '  instance_class      = "db.t4g.micro"\n'
        "  publicly_accessible = true\n"
        "}\n"
    )
    failed = {c["check_id"] for c in checkov(tmp_path)["results"]["failed_checks"]}
    assert {"CKV_AWS_17", "CKV_AWS_16"} <= failed  # public, unencrypted
