"""log-shipping/: Fluent Bit's config and DaemonSet, its Lua mapping, the index template.

No Fluent Bit and no Elasticsearch here, so each piece is checked for what it is:
- fluent-bit.yaml is parsed, and its inputs, filter and output are checked against each other,
  the DaemonSet that mounts them, the Ray pods' log volumes and the template;
- ray_ecs.lua runs in LuaJIT (Fluent Bit's Lua, through lupa) on log lines the application
  writes: the Serve ingress's access lines from the real FastAPI app, written by Serve's own
  replica logger (JSON encoding, as serve_config.yaml sets it) and by ray_app's ECS formatter,
  the CLI's log records, and Ray's JSON formatter's lines;
- every field of every document that comes out must be one the index template maps, with a
  value of its type;
- the DaemonSet is valid Kubernetes and breaks no Pod Security "restricted" control but the two
  it documents (hostPath, user 0).
"""

from __future__ import annotations

import builtins
import datetime as dt
import fnmatch
import functools
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import validate as k8s_validate

from tests.infra import chart, crd, project
from tests.infra.pod_security import restricted_violations

pytestmark = pytest.mark.infra

LOG_SHIPPING = project.REPO / "log-shipping"
CONFIG = LOG_SHIPPING / "fluent-bit" / "fluent-bit.yaml"
LUA = LOG_SHIPPING / "fluent-bit" / "ray_ecs.lua"
TEMPLATE = LOG_SHIPPING / "elasticsearch" / "index-template.json"
DAEMONSET = LOG_SHIPPING / "fluent-bit-daemonset.yaml"
KUSTOMIZATION = LOG_SHIPPING / "kustomization.yaml"
# What the DaemonSet may do that "restricted" refuses (fluent-bit-daemonset.yaml says why).
DOCUMENTED_EXCEPTIONS = {
    "volume kubelet-pods: type ['hostPath']",
    "volume state: type ['hostPath']",
    "container fluent-bit: runAsNonRoot is not true (here or on the pod)",
    "pod: runAsUser 0",
}
# Variables the DaemonSet gives Fluent Bit (Secret fluent-bit-elasticsearch, the downward API).
SECRET_VARIABLES = {
    "ELASTICSEARCH_HOST",
    "ELASTICSEARCH_PORT",
    "ELASTICSEARCH_USER",
    "ELASTICSEARCH_PASSWORD",
}
# In every document; log.level too where the line has one (a printed line has none).
ECS_REQUIRED = {"@timestamp", "message", "service.name", "ecs.version"}


# --- Fluent Bit's configuration -----------------------------------------------------------------


@functools.cache
def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())  # type: ignore[no-any-return]


def plugins(kind: str) -> list[dict[str, Any]]:
    return config()["pipeline"][kind]  # type: ignore[no-any-return]


def expand(value: str) -> str:
    """``${NAME}`` from the config's env section; others (the DaemonSet's) stay as they are."""
    env = config().get("env", {})
    return re.sub(r"\$\{(\w+)\}", lambda m: str(env.get(m[1], m[0])), value)


def daemonset_docs() -> list[dict[str, Any]]:
    return crd.load_yaml_documents(DAEMONSET)


def pod_spec() -> dict[str, Any]:
    (daemonset,) = [d for d in daemonset_docs() if d["kind"] == "DaemonSet"]
    return daemonset["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def mounts() -> dict[str, str]:
    """Mount path -> volume name of the Fluent Bit container."""
    (container,) = pod_spec()["containers"]
    return {m["mountPath"]: m["name"] for m in container["volumeMounts"]}


def test_config_has_the_sections_fluent_bit_reads() -> None:
    assert set(config()) <= {"env", "service", "parsers", "pipeline", "includes", "plugins"}
    assert set(config()["pipeline"]) == {"inputs", "filters", "outputs"}
    for kind in ("inputs", "filters", "outputs"):
        for plugin in plugins(kind):
            assert plugin.get("name"), f"{kind}: a plugin without a name"
    parsers = {p["name"]: p for p in config()["parsers"]}
    for tail in plugins("inputs"):
        assert tail["name"] == "tail"
        assert parsers[tail["parser"]]["format"] == "json", "lines are decoded as JSON"
        assert tail["path_key"] == "log.file.path", "ECS's field for the file a line came from"
        assert expand(tail["db"]).startswith(expand("${STATE}/")), "read positions persist"


def test_every_input_reaches_the_lua_filter_and_the_output() -> None:
    for tail in plugins("inputs"):
        for kind in ("filters", "outputs"):
            matched = [p for p in plugins(kind) if fnmatch.fnmatchcase(tail["tag"], p["match"])]
            assert len(matched) == 1, f"{tail['tag']} goes through {len(matched)} {kind}"


def test_lua_filter_runs_the_script_the_config_map_mounts() -> None:
    (lua,) = [f for f in plugins("filters") if f["name"] == "lua"]
    script = Path(lua["script"])
    assert mounts()[str(script.parent)] == "config", "the script is not where the ConfigMap is"
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    (generated,) = kustomization["configMapGenerator"]
    files = {Path(f).name: LOG_SHIPPING / f for f in generated["files"]}
    assert files[script.name] == LUA and files[CONFIG.name] == CONFIG
    assert all(path.is_file() for path in files.values())
    assert "ray_to_ecs" in lua_runtime().globals() and lua["call"] == "ray_to_ecs"
    assert lua["time_as_table"] is True, "ray_to_ecs returns {sec, nsec}"
    (container,) = pod_spec()["containers"]
    assert container["args"] == ["--config", f"{script.parent}/{CONFIG.name}"]


def test_output_writes_the_data_stream_the_template_makes() -> None:
    (output,) = plugins("outputs")
    assert output["name"] in ("es", "opensearch")
    patterns = template()["index_patterns"]
    assert any(fnmatch.fnmatchcase(output["index"], p) for p in patterns)
    assert "data_stream" in template() and output["write_operation"] == "create"
    assert output["time_key"] == "@timestamp" and output["replace_dots"] is False
    assert output["logstash_format"] is False, "a data stream, not daily indices"
    assert output["tls"] is True and output["tls.verify"] is True


def test_variables_are_the_config_s_or_the_daemonset_s() -> None:
    used = set(re.findall(r"\$\{(\w+)\}", CONFIG.read_text()))
    assert used - set(config().get("env", {})) == SECRET_VARIABLES
    (container,) = pod_spec()["containers"]
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == ["fluent-bit-elasticsearch"]
    assert {e["name"] for e in container["env"]} == {"NODE_NAME"}  # host.name, in ray_ecs.lua
    assert 'os.getenv("NODE_NAME")' in LUA.read_text()


def ray_pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template of a Ray node (head or worker) in the workloads of cluster/."""

    def walk(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if where.endswith(".submitterPodTemplate"):
            return  # `ray job submit` in a pod of its own: no Ray node, no Ray logs
        if isinstance(node, dict):
            if "containers" in node:
                yield where, node
            for key, value in node.items():
                yield from walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{where}[{i}]")

    sources = [
        *(
            (path.name, doc)
            for path in sorted(project.CLUSTER.glob("ray-*.yaml"))
            for doc in crd.load_yaml_documents(path)
        ),
        *(("charts/ray-app", doc) for doc in chart.rendered("dev")),
    ]
    for where, doc in sources:
        if str(doc.get("apiVersion", "")).startswith("ray.io/"):
            yield from walk(doc, f"{where}:{doc['kind']}")


def test_tail_paths_find_the_ray_pods_log_files(tmp_path: Path) -> None:
    """The globs, rooted in a fake node's kubelet folder, against Ray's file names in each Ray
    pod's log volume: Serve's, job drivers', workers'; not Ray's own daemons', and not twice
    through session_latest."""
    from ray.serve._private.common import ServeComponentType
    from ray.serve._private.utils import get_component_file_name

    specs = list(ray_pod_specs())
    assert len(specs) >= 5, "the RayCluster's, RayJob's, RayCronJob's and RayService's pods"
    volumes = set()
    for where, spec in specs:
        logs = {
            m["name"] for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/tmp/ray"
        }
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        assert logs and logs <= empty_dirs, f"{where}: /tmp/ray is not an emptyDir volume"
        volumes |= logs
    assert volumes == {"ray-logs"}, volumes

    kubelet = mounts()
    assert kubelet["/var/lib/kubelet/pods"] == "kubelet-pods"
    volume = tmp_path / "pods/0f1e-uid/volumes/kubernetes.io~empty-dir/ray-logs"
    session = volume / "session_2026-11-30_04-17-50_123456_1"
    replica = get_component_file_name("ray-app_Ingress", "x1y2", ServeComponentType.REPLICA, ".log")
    files = {
        f"logs/serve/{replica}": "ray.serve",
        "logs/serve/controller_512.log": "ray.serve",
        "logs/job-driver-raysubmit_abc.log": "ray.job",
        "logs/worker-9f8e-01000000-777.out": "ray.worker",
        "logs/worker-9f8e-01000000-777.err": "ray.worker",
        "logs/raylet.out": None,
        "logs/gcs_server.err": None,
    }
    for name in files:
        (session / name).parent.mkdir(parents=True, exist_ok=True)
        (session / name).write_text("{}\n")
    (session.parent / "session_latest").symlink_to(session)
    found: dict[str, str] = {}
    for tail in plugins("inputs"):
        for pattern in expand(tail["path"]).split(","):
            rooted = pattern.replace("/var/lib/kubelet/", "", 1)
            assert rooted != pattern, f"{pattern} is not under the kubelet mount"
            for path in tmp_path.glob(rooted):
                key = path.relative_to(session).as_posix()
                assert key not in found, f"{key} read twice"
                found[key] = tail["tag"]
    assert found == {k: v for k, v in files.items() if v}


# --- The index template --------------------------------------------------------------------------


@functools.cache
def template() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text())  # type: ignore[no-any-return]


OPAQUE = "object (not indexed)"


def template_fields(properties: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted field name -> mapped type; an object that is stored but not indexed is OPAQUE."""
    fields: dict[str, str] = {}
    for name, mapping in properties.items():
        path = f"{prefix}{name}"
        if "properties" in mapping:
            fields.update(template_fields(mapping["properties"], f"{path}."))
        elif mapping.get("type") == "object":
            fields[path] = OPAQUE if mapping.get("enabled") is False else "object"
        else:
            fields[path] = mapping["type"]
    return fields


@functools.cache
def mapped() -> dict[str, str]:
    return template_fields(template()["template"]["mappings"]["properties"])


def test_template_is_a_data_stream_template_in_ecs_names() -> None:
    assert set(template()) <= {
        "index_patterns",
        "data_stream",
        "priority",
        "template",
        "composed_of",
        "version",
        "_meta",
    }
    assert template()["priority"] > 100, "above Elasticsearch's built-in logs-*-* (100)"
    mappings = template()["template"]["mappings"]
    # Fields nobody mapped are kept in _source, not indexed: a new field never rejects a line.
    assert mappings["dynamic"] is False
    assert set(mapped().values()) <= {"date", "text", "keyword", "long", "object", OPAQUE}
    ecs_types = {
        "@timestamp": "date",
        "message": "text",
        "log.level": "keyword",
        "service.name": "keyword",
        "trace.id": "keyword",
        "ecs.version": "keyword",
        "event.duration": "long",
        "http.response.status_code": "long",
    }
    assert {k: mapped().get(k) for k in ecs_types} == ecs_types
    assert template()["_meta"]["ecs_version"] == lua_runtime().globals().ECS_VERSION


def _flatten(doc: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted name -> value, as Elasticsearch reads dots in names (as object paths)."""
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if mapped().get(path) == OPAQUE:
            yield path, value
        elif isinstance(value, dict):
            yield from _flatten(value, f"{path}.")
        else:
            yield path, value


def _fits(kind: str, value: Any) -> bool:
    values = value if isinstance(value, list) and kind != OPAQUE else [value]
    for v in values:
        if kind == "keyword" and not isinstance(v, (str, int, float)):
            return False
        if kind == "text" and not isinstance(v, str):
            return False
        if kind == "long" and (not isinstance(v, int) or isinstance(v, bool)):
            return False
        if kind == "date":
            dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    return True


def template_errors(doc: dict[str, Any]) -> list[str]:
    """What the index template would not index, or index as another type, of a document."""
    errors = [f"{name}: missing" for name in sorted(ECS_REQUIRED - dict(_flatten(doc)).keys())]
    for name, value in _flatten(doc):
        kind = mapped().get(name)
        if kind is None:
            errors.append(f"{name}: not in the template")
        elif not _fits(kind, value):
            errors.append(f"{name}: {value!r} is not a {kind}")
    return errors


# --- ray_ecs.lua, as Fluent Bit runs it --------------------------------------------------------


@functools.cache
def lua_runtime() -> Any:
    try:
        from lupa import luajit21 as lua  # Fluent Bit embeds LuaJIT 2.1
    except ImportError:
        pytest.skip("lupa with LuaJIT not installed (pip install -e '.[dev]')")
    runtime = lua.LuaRuntime(unpack_returned_tuples=True)
    runtime.execute(LUA.read_text())
    return runtime


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def _from_lua(value: Any) -> Any:
    if type(value).__name__ == "_LuaTable":
        items = dict(value.items())
        if items and all(isinstance(k, int) for k in items):
            return [_from_lua(items[i]) for i in sorted(items)]
        return {k: _from_lua(v) for k, v in items.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)  # msgpack packs a whole Lua number as an integer
    return value


def ship(line: str, tag: str, path: str, now: float = 1_700_000_000.0) -> dict[str, Any]:
    """One log line through the pipeline fluent-bit.yaml sets up: tail with the json parser
    (an object, else the raw line as ``log``) and path_key, the lua filter, and the es output,
    which writes the record's time as ``@timestamp``."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        record = {"log": line}
    record["log.file.path"] = path
    runtime = lua_runtime()
    stamp = runtime.table_from({"sec": int(now), "nsec": 0})
    code, time, out = runtime.globals().ray_to_ecs(tag, stamp, _to_lua(runtime, record))
    assert code in (1, 2)
    doc = _from_lua(out)
    assert "@timestamp" not in doc, "the es output would write a second @timestamp"
    moment = dt.datetime.fromtimestamp(time["sec"] + time["nsec"] / 1e9, tz=dt.timezone.utc)
    doc["@timestamp"] = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return doc


POD = "/var/lib/kubelet/pods/0f1e-uid/volumes/kubernetes.io~empty-dir/ray-logs/session_2026/logs"


@pytest.fixture
def node_name(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("NODE_NAME", "ip-10-0-1-23.ec2.internal")
    return "ip-10-0-1-23.ec2.internal"


def test_every_field_ray_names_is_mapped() -> None:
    """The keys Ray's and Serve's JSON formatters may write (their own constants) are all
    renamed to ECS or dropped as time fields; none falls through to ray.extra."""
    from ray._common.logging_constants import LogKey
    from ray.serve._private import constants

    ray_keys = {k.value for k in LogKey}
    serve_keys = {
        v
        for k, v in vars(constants).items()
        if k.startswith("SERVE_LOG_") and isinstance(v, str) and v.isidentifier()
    }
    serve_keys -= {constants.SERVE_LOG_EXTRA_FIELDS}  # flattened into the line by the formatter
    handled = set(lua_runtime().globals().RAY_FIELDS) | set(
        lua_runtime().globals().TIME_FIELDS.values()
    )
    assert (ray_keys | serve_keys) - handled - {"message"} == set()


def test_template_errors_helper_catches_what_elasticsearch_would_not_index() -> None:
    good = {"@timestamp": "2026-11-30T04:17:50.123Z", "message": "m", "ecs.version": "8.17.0"}
    good |= {"log": {"level": "info"}, "service.name": "ray-app", "ray.extra": {"any": [1]}}
    assert template_errors(good) == []
    bad = {**good, "http.response.status_code": "200", "ray.unknown": 1}
    del bad["service.name"]
    assert template_errors(bad) == [
        "service.name: missing",
        "http.response.status_code: '200' is not a long",
        "ray.unknown: not in the template",
    ]


def test_a_text_line_is_the_message(node_name: str) -> None:
    doc = ship("Traceback (most recent call last):", "ray.worker", f"{POD}/worker-1-2-3.err")
    assert template_errors(doc) == []
    assert doc["message"] == "Traceback (most recent call last):"
    assert (doc["service.name"], doc["event.dataset"]) == ("ray", "ray.worker")
    assert (doc["kubernetes.pod.uid"], doc["host.name"]) == ("0f1e-uid", node_name)
    assert doc["@timestamp"] == "2023-11-14T22:13:20.000Z", "no time in the line: read time"


# --- Lines the application writes -----------------------------------------------------------------


@pytest.fixture
def serve_replica_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Serve's own replica logger, configured as a replica of the ingress configures it
    (serve_config.yaml: encoding JSON, access log off), writing to tmp_path; the ``ray.serve``
    logger, print and the standard streams are put back afterwards."""
    from ray.serve._private.common import ServeComponentType
    from ray.serve._private.logging_utils import configure_component_logger
    from ray.serve.schema import LoggingConfig

    serve_config = yaml.safe_load((project.REPO / "serve_config.yaml").read_text())
    (app,) = serve_config["applications"]
    logger = logging.getLogger("ray.serve")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    for name, value in (("print", builtins.print),):
        monkeypatch.setattr(builtins, name, value)
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    configure_component_logger(
        component_name=f"{app['name']}_Ingress",
        component_id="x1y2",
        logging_config=LoggingConfig(**app["logging_config"], logs_dir=str(tmp_path)),
        component_type=ServeComponentType.REPLICA,
        max_bytes=10**7,
        backup_count=1,
    )
    try:
        yield tmp_path
    finally:
        for handler in logger.handlers:
            handler.flush()
            handler.close()
        logger.handlers[:], logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])


def _request_through_the_ingress(ecs_stream: io.StringIO) -> str:
    """One POST /v1/predict to the real FastAPI app of an ingress replica (make_api), over the
    fake variants of tests/unit; ray_app's ECS formatter also writes the access record."""
    import asyncio
    import tempfile

    from ray_app.core.api_keys import hash_api_key
    from ray_app.core.logs import EcsFormatter
    from ray_app.core.settings import Settings
    from ray_app.core.storage import DataRoot
    from ray_app.serving.api import make_api
    from ray_app.serving.args import AuthSpec
    from ray_app.serving.auth import Authorizer
    from tests.unit.asgi import asgi_post
    from tests.unit.test_serve_service import FakeVariant, Linear, make

    class Metrics:
        def request(self, variant: str, status: int, latency_ms: float) -> None:
            pass

        def auth_refused(self, reason: str) -> None:
            pass

    folder = Path(tempfile.mkdtemp())
    (folder / "api_key_hashes").write_text(json.dumps({"desk-7": hash_api_key("k" * 43)}))
    settings = Settings(data_root=str(folder), secrets={"backend": "file", "dir": str(folder)})
    auth = Authorizer(AuthSpec(rate_limit=None), settings, Metrics())

    handler = logging.StreamHandler(ecs_stream)
    handler.setFormatter(EcsFormatter())
    logger = logging.getLogger("ray.serve")
    logger.addHandler(handler)
    try:
        service, _ = make({"champion": FakeVariant("champion", Linear(1))})
        status, _ = asyncio.run(
            asgi_post(
                make_api(service, Metrics(), auth, DataRoot(str(folder))),
                "/v1/predict",
                {"tickers": ["AAPL", "MSFT"], "as_of": "2012-01-08"},
                {
                    "X-Request-ID": "req-42",
                    "X-Client-Id": "alice",
                    "Authorization": f"Bearer {'k' * 43}",
                },
            )
        )
        assert status == 200
        logger.info("after the request")  # a plain line of the replica, no extra fields
    finally:
        logger.removeHandler(handler)
    return "req-42"


def test_access_lines_map_onto_the_template(serve_replica_logs: Path, node_name: str) -> None:
    ecs_stream = io.StringIO()
    request_id = _request_through_the_ingress(ecs_stream)
    for handler in logging.getLogger("ray.serve").handlers:
        handler.flush()
    (log_file,) = serve_replica_logs.glob("replica_ray-app_Ingress_x1y2.log")
    serve_lines = log_file.read_text().splitlines()
    assert len(serve_lines) == 2, serve_lines
    path = f"{POD}/serve/{log_file.name}"
    shipped = [ship(line, "ray.serve", path) for line in serve_lines]
    for doc in shipped:
        assert template_errors(doc) == [], doc
    access, plain = shipped
    assert access["trace.id"] == request_id and access["ray_app.client_key"] == "alice"
    assert access["ray_app.api_key_id"] == "desk-7"
    assert (access["http.request.method"], access["url.path"]) == ("POST", "/v1/predict")
    assert access["http.response.status_code"] == 200 and access["event.duration"] > 0
    assert (access["ray_app.variant"], access["ray_app.model.name"]) == ("champion", "tiny")
    assert (access["event.dataset"], access["service.name"]) == ("ray_app.access", "ray-app")
    assert access["ray.serve.deployment"] == "ray-app_Ingress"
    assert access["ray.serve.replica"] == "x1y2" and access["log.level"] == "info"
    assert (plain["message"], plain["event.dataset"]) == ("after the request", "ray.serve")
    written = dt.datetime.fromisoformat(access["@timestamp"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.timezone.utc) - written).total_seconds()) < 120

    # The same record through ray_app's own formatter: the same ECS fields, no renaming.
    ecs_access = json.loads(ecs_stream.getvalue().splitlines()[0])
    assert set(ecs_access) >= ECS_REQUIRED | {"log.level", "trace.id"}
    own = ship(json.dumps(ecs_access), "ray.serve", path)
    assert template_errors(own) == []
    same = set(ecs_access) - {"@timestamp", "log.origin.file.name", "log.origin.file.line"}
    assert {k: own[k] for k in same} == {k: ecs_access[k] for k in same}
    shared = {k for k in access if k.startswith(("http.", "url.", "event.", "ray_app.", "trace."))}
    assert {k: own[k] for k in shared} == {k: access[k] for k in shared}


def test_cli_log_records_map_onto_the_template(node_name: str) -> None:
    """What ``ray-app`` (and so jobs/) writes for a log record: ``logs.configure`` as the CLI's
    main() calls it, a warning of the storage layer and an error with its traceback."""
    from ray_app.core import logs

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure("INFO", stream=stream)
        logging.getLogger("ray_app.core.storage").warning("no lock %r on a remote root", "x")
        try:
            raise ValueError("bad bar")
        except ValueError:
            logging.getLogger("ray_app.data.ingest").exception("ingest failed")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    docs = [ship(line, "ray.job", f"{POD}/job-driver-raysubmit_1.log") for line in lines]
    for line, doc in zip(lines, docs, strict=True):
        assert template_errors(doc) == [], doc
        assert doc["@timestamp"] == json.loads(line)["@timestamp"], "the line's time is kept"
    warning, error = docs
    assert (warning["log.level"], warning["service.name"]) == ("warning", "ray-app")
    assert warning["log.logger"] == "ray_app.core.storage"
    assert (error["error.type"], error["error.message"]) == ("ValueError", "bad bar")
    assert "Traceback" in error["error.stack_trace"]


def test_ray_core_json_lines_map_onto_the_template(
    monkeypatch: pytest.MonkeyPatch, node_name: str
) -> None:
    """A task's log line as Ray writes it with ``ray.LoggingConfig(encoding="JSON")``: Ray's
    JSONFormatter and core context filter, the context being a running task's."""
    from ray._common.filters import CoreContextFilter
    from ray._common.formatters import JSONFormatter
    from ray._common.logging_constants import LogKey

    context = {
        LogKey.JOB_ID.value: "01000000",
        LogKey.WORKER_ID.value: "9f8e" * 14,
        LogKey.NODE_ID.value: "ab12" * 14,
        LogKey.ACTOR_ID.value: None,
        LogKey.TASK_ID.value: "16310a0f0a45af5cffffffffffffffffffffffff01000000",
        LogKey.TASK_NAME.value: "compute_features",
        LogKey.TASK_FUNCTION_NAME.value: "ray_app.data.features.compute_features",
        LogKey.ACTOR_NAME.value: None,
    }
    monkeypatch.setattr(
        CoreContextFilter, "get_ray_core_logging_context", staticmethod(lambda: context)
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(CoreContextFilter())
    logger = logging.getLogger("ray_app.test.core_json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.warning("features for %d tickers", 40, extra={"tickers": 40})
        logger.info("features written")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    docs = [ship(line, "ray.worker", f"{POD}/worker-9f8e-01000000-777.err") for line in lines]
    for doc in docs:
        assert template_errors(doc) == [], doc
    first, second = docs
    assert (first["ray.job.id"], first["ray.task.name"]) == ("01000000", "compute_features")
    assert first["log.level"] == "warning" and first["ray.extra"] == {"tickers": 40}
    assert (first["service.name"], first["event.dataset"]) == ("ray", "ray.worker")
    assert "ray.actor.id" not in first, "Ray leaves an actor-less task's actor id out"
    assert second["log.level"] == "info" and "ray.extra" not in second
    # Ray stamps every record in nanoseconds (its log record factory): that is the time.
    nanos = json.loads(lines[0])["timestamp_ns"]
    shipped = dt.datetime.fromisoformat(first["@timestamp"].replace("Z", "+00:00"))
    assert abs(shipped.timestamp() - nanos / 1e9) < 0.002


# --- The DaemonSet ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc", [pytest.param(d, id=f"{d['kind']}/{d['metadata']['name']}") for d in daemonset_docs()]
)
def test_objects_are_valid_kubernetes(doc: dict[str, Any]) -> None:
    k8s_validate(doc, project.KUBERNETES_VERSION, strict=True)


def test_daemonset_runs_a_pinned_fluent_bit_4() -> None:
    """The YAML configuration format with parsers in it needs Fluent Bit 3 or later; the
    config is written and checked for 4.0."""
    (container,) = pod_spec()["containers"]
    image, _, tag = container["image"].rpartition(":")
    assert image == "cr.fluentbit.io/fluent/fluent-bit"
    assert re.fullmatch(r"4\.0\.\d+", tag), f"{tag}: pin a 4.0.x release"
    assert "Fluent Bit 4.0" in CONFIG.read_text()


def test_daemonset_breaks_only_the_restricted_controls_it_documents() -> None:
    assert set(restricted_violations(pod_spec())) == DOCUMENTED_EXCEPTIONS
    text = DAEMONSET.read_text()
    assert "hostPath" in text and "user 0" in text, "say why in the manifest"
    (namespace,) = [d for d in daemonset_docs() if d["kind"] == "Namespace"]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged", "baseline bans hostPath"
    for mount in pod_spec()["containers"][0]["volumeMounts"]:
        if mount["name"] == "kubelet-pods":
            assert mount["readOnly"] is True


def test_restricted_violations_helper() -> None:
    pod = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "app",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    assert restricted_violations(pod) == []
    pod["hostNetwork"] = True
    pod["containers"][0]["securityContext"] = {"privileged": True}
    assert restricted_violations(pod) == [
        "hostNetwork is true",
        "container app: privileged",
        "container app: allowPrivilegeEscalation is not false",
        "container app: capabilities.drop lacks ALL",
    ]


def test_kustomization_builds_and_mounts_the_generated_config_map() -> None:
    built = project.kustomize_build(LOG_SHIPPING)
    kinds = {d["kind"]: d for d in built}
    assert set(kinds) == {"Namespace", "ServiceAccount", "DaemonSet", "ConfigMap"}
    config_map = kinds["ConfigMap"]
    assert config_map["data"][CONFIG.name] == CONFIG.read_text()
    assert config_map["data"][LUA.name] == LUA.read_text()
    volumes = kinds["DaemonSet"]["spec"]["template"]["spec"]["volumes"]
    (config,) = [v for v in volumes if v["name"] == "config"]
    # The name carries the content's hash, so a changed config rolls the DaemonSet.
    assert config["configMap"]["name"] == config_map["metadata"]["name"] != "fluent-bit-ray-app"
    for doc in built:
        k8s_validate(doc, project.KUBERNETES_VERSION, strict=True)
