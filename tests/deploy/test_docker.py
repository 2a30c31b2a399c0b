"""Static checks of the deployment files in docker/ (no Docker engine, no network).

What is checked:
* docker/compose.yml validates against the Compose Specification JSON schema vendored at
  docker/compose-spec.schema.json (and the validator really rejects a broken file);
* every `greenchannel` invocation in compose (commands, entrypoints, health checks, the
  image's ENTRYPOINT + CMD when a service does not override them) and in the Dockerfile
  parses with `streams.cli.build_parser()`;
* the Dockerfile: multi-stage on python:3.11-slim, every COPY source exists in the repository
  and survives docker/Dockerfile.dockerignore, every package in pyproject is copied, a
  PostgreSQL driver is installed, non-root user, a health check that runs the copied script;
* docker/healthcheck.py against a loopback HTTP server and a fake /proc;
* the Kafka cluster: three KRaft nodes sharing one CLUSTER_ID and one quorum voter list,
  replication 3 / min ISR 2, 12 partitions; the worker: replicas >= 2 with standby replicas, exactly_once, its
  broker URL naming all three nodes, the shared key volume, start order; the one-shot jobs;
* the projector (the only writer of the database): replicas >= 2 in one consumer group, the
  worker's broker, database, app id and processing guarantee (read_committed depends on it),
  start order after the migrations and topics, a health check that works without a web port.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import fnmatch
import glob
import http.server
import importlib.util
import io
import json
import posixpath
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from streams.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yml"
SCHEMA_FILE = DOCKER / "compose-spec.schema.json"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
HEALTHCHECK_SCRIPT = DOCKER / "healthcheck.py"

EXPECTED_TOPICS = [
    "gc.shipment.requests",
    "gc.enterprises",
    "gc.region.risk",
    "gc.pass.decisions",
    "gc.checkpoint.scans",
    "gc.pass.status",
    "gc.deadletter",
    "gc.pass.keys",
    "gc.gateway.requests",
    "gc.pass.events",
]
# COPY sources allowed to match nothing (BuildKit skips an empty wildcard match).
OPTIONAL_COPY_GLOBS = {"README.m[d]"}


# ------------------------------------------------------------------------------------------------
# Loading and small parsers
# ------------------------------------------------------------------------------------------------


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, environ: dict[str, str] | None = None):
    """Compose variable interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, $$) over a tree."""
    environ = environ or {}
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(3)
        op, arg = m.group(2), m.group(4) if m.group(1) else None
        if op in (":-",):
            return environ.get(name) or arg
        if op == "-":
            return environ.get(name, arg)
        if name not in environ:
            raise AssertionError(f"${{{name}}} has no default: compose would substitute an empty string")
        return environ[name]

    return _INTERPOLATION.sub(repl, value)


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def mounts_of(service: dict) -> list[dict]:
    """Volume mounts in long form: {'type', 'source', 'target', 'read_only'}."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
            mode = parts[2] if len(parts) > 2 else "rw"
            kind = "bind" if source and (source.startswith((".", "/", "~"))) else "volume"
            out.append({"type": kind, "source": source, "target": target, "read_only": "ro" in mode.split(",")})
        else:
            out.append(
                {
                    "type": v["type"],
                    "source": v.get("source"),
                    "target": v["target"],
                    "read_only": bool(v.get("read_only", False)),
                }
            )
    return out


def depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec["condition"] for name, spec in deps.items()}


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out, pending = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # comment lines inside a continuation are dropped
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    """`--from=build a b c` -> ({'from': 'build'}, ['a', 'b', 'c']); JSON form supported."""
    flags, rest = {}, args
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        key, _, value = flag[2:].partition("=")
        flags[key] = value
        rest = rest.strip()
    items = json.loads(rest) if rest.startswith("[") else rest.split()
    return flags, items


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions grouped by stage (index 0: before the first FROM)."""
    groups: list[list[tuple[str, str]]] = [[]]
    for instr in dockerfile_instructions():
        if instr[0] == "FROM":
            groups.append([])
        groups[-1].append(instr)
    return groups


def image_entrypoint_and_cmd() -> tuple[list[str], list[str]]:
    final = stages()[-1]
    entry = [json.loads(a) for i, a in final if i == "ENTRYPOINT"]
    cmd = [json.loads(a) for i, a in final if i == "CMD"]
    assert entry and cmd, "the final stage needs ENTRYPOINT and CMD, both in exec (JSON) form"
    return entry[-1], cmd[-1]


def is_greenchannel(token: str) -> bool:
    return posixpath.basename(token) == "greenchannel"


_SHELL_SEPARATORS = {"&&", "||", ";", "|", "&"}
_SHELLS = {"sh", "bash", "dash", "ash"}
_PREFIXES = {"exec", "env", "command", "nohup"}


def _split_shell(script: str) -> list[list[str]]:
    """A shell script as simple commands (split at ; && || | &)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in _SHELL_SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in commands + [current] if c]


def greenchannel_invocations(argv: list[str]) -> list[list[str]]:
    """Argument lists of every `greenchannel ...` run by an exec-form argv: the program itself
    (after `env`/`exec` and VAR=value prefixes), or commands of a `sh -c` script.
    Only the command position counts: in `pg_isready -d greenchannel` it is an argument."""
    i = 0
    while i < len(argv) and (argv[i] in _PREFIXES or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[i])):
        i += 1
    if i == len(argv):
        return []
    program, args = argv[i], argv[i + 1 :]
    if is_greenchannel(program):
        return [args]
    if posixpath.basename(program) in _SHELLS and "-c" in args[:-1]:
        return shell_invocations(args[args.index("-c") + 1])
    return []


def shell_invocations(script: str) -> list[list[str]]:
    return [found for command in _split_shell(script) for found in greenchannel_invocations(command)]


def parse_cli(args: list[str]):
    """Parse with the project's own parser; argparse errors become an AssertionError."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(args)
    except SystemExit as exc:
        raise AssertionError(
            f"`greenchannel {shlex.join(args)}` is rejected by streams.cli.build_parser() "
            f"(exit {exc.code}): {err.getvalue().strip()}"
        ) from None


def uses_project_image(service: dict) -> bool:
    build = service.get("build")
    if isinstance(build, dict):
        return posixpath.normpath(build.get("dockerfile", "Dockerfile")) == "docker/Dockerfile"
    return build is not None


def effective_argvs(service: dict) -> list[list[str]]:
    """Every argv the service runs, exec form: main process (entrypoint + command, falling back
    to the image's ENTRYPOINT/CMD) and its health check (CMD-SHELL as `sh -c`)."""
    argvs = []
    image_entry, image_cmd = image_entrypoint_and_cmd() if uses_project_image(service) else (None, None)

    def as_list(v):
        return shlex.split(v) if isinstance(v, str) else list(v or [])

    entry = service.get("entrypoint", image_entry)
    # Overriding the entrypoint also drops the image's CMD (as `docker run --entrypoint` does).
    cmd = service.get("command", image_cmd if "entrypoint" not in service else None)
    if entry is not None or cmd is not None:
        argvs.append(as_list(entry) + as_list(cmd))
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, str):
        argvs.append(["sh", "-c", test])
    elif test and test[0] == "CMD-SHELL":
        argvs.append(["sh", "-c", " ".join(test[1:])])
    elif test and test[0] == "CMD":
        argvs.append(list(test[1:]))
    return argvs


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def compose(raw_compose) -> dict:
    return interpolate(raw_compose)


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def kafka_nodes(services) -> dict[str, dict]:
    return {
        name: s
        for name, s in services.items()
        if str(s.get("image", "")).startswith("apache/kafka") and "KAFKA_NODE_ID" in env_of(s)
    }


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def settings_from(env: dict[str, str]):
    """The project's Settings built from a service's GC_* variables (types validated)."""
    from streams.settings import Settings

    fields = {k[3:].lower(): v for k, v in env.items() if k.startswith("GC_")}
    return Settings(_env_file=None, **fields)


# ------------------------------------------------------------------------------------------------
# Compose Specification schema
# ------------------------------------------------------------------------------------------------


def test_vendored_schema_is_the_compose_specification(schema):
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["title"] == "Compose Specification"
    assert schema["$id"] == "compose_spec.json"
    assert {"service", "deployment", "healthcheck", "volume"} <= set(schema["definitions"])


def test_compose_file_validates_against_compose_spec(raw_compose, schema):
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(raw_compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


@pytest.mark.parametrize("breakage", ["unknown service key", "bad depends_on condition", "replicas as list"])
def test_schema_validation_rejects_a_broken_compose_file(raw_compose, schema, breakage):
    """The positive result above means something: the same validator catches real mistakes."""
    broken = copy.deepcopy(raw_compose)
    worker = broken["services"]["worker"]
    if breakage == "unknown service key":
        worker["replica"] = 3
    elif breakage == "bad depends_on condition":
        worker["depends_on"]["topics"]["condition"] = "service_finished"
    else:
        worker["deploy"]["replicas"] = [3]
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_compose_references_resolve(compose, services):
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for dep in depends_on(service):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for secret in service.get("secrets") or []:
            assert secret in (compose.get("secrets") or {}), f"{name}: secret {secret} not declared"
        for config in service.get("configs") or []:
            assert config["source"] in (compose.get("configs") or {}), f"{name}: config {config['source']} not declared"
        for mount in mounts_of(service):
            if mount["type"] == "volume" and mount["source"]:
                assert mount["source"] in declared_volumes, f"{name}: volume {mount['source']} not declared"
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            assert (COMPOSE_FILE.parent / context).resolve() == ROOT, f"{name}: build context is not the repo root"
            assert (ROOT / build.get("dockerfile", "Dockerfile")).is_file()


def test_every_variable_has_a_default(raw_compose):
    interpolate(raw_compose)  # raises when a ${VAR} would come out empty


# ------------------------------------------------------------------------------------------------
# greenchannel invocations against streams.cli.build_parser()
# ------------------------------------------------------------------------------------------------


def test_compose_greenchannel_commands_parse(services):
    seen, failures = {}, []
    for name, service in services.items():
        for argv in effective_argvs(service):
            for args in greenchannel_invocations(argv):
                try:
                    ns = parse_cli(args)
                except AssertionError as exc:
                    failures.append(f"{name}: {exc}")
                    continue
                seen.setdefault(name, []).append(ns)
    assert not failures, "\n".join(failures)
    commands = {ns.command for found in seen.values() for ns in found}
    # Not vacuous: the services that must run greenchannel were found and understood.
    assert {"worker", "projector", "topics", "db", "keys"} <= commands, commands
    assert [ns.command for ns in seen["worker"]] == ["worker"]
    assert [ns.command for ns in seen["projector"]] == ["projector"]
    assert [ns.command for ns in seen["topics"]] == ["topics"]
    assert [(ns.command, ns.db_command) for ns in seen["migrate"]] == [("db", "upgrade")]
    assert [ns.command for ns in seen["keys"]] == ["keys"]


def test_dockerfile_entrypoint_and_cmd_parse():
    entry, cmd = image_entrypoint_and_cmd()
    assert entry == ["greenchannel"]
    invocations = greenchannel_invocations(entry + cmd)
    assert len(invocations) == 1
    assert parse_cli(invocations[0]).command == "worker"


def test_invocation_finder_and_parser_catch_mistakes():
    assert greenchannel_invocations(["sh", "-c", "greenchannel keys && exec greenchannel db upgrade"]) == [
        ["keys"],
        ["db", "upgrade"],
    ]
    assert greenchannel_invocations(["/opt/venv/bin/greenchannel", "pass", "show", "P-1"]) == [["pass", "show", "P-1"]]
    assert greenchannel_invocations(["env", "GC_PARTITIONS=12", "greenchannel", "topics"]) == [["topics"]]
    assert greenchannel_invocations(["sh", "-c", "pg_isready -U greenchannel -d greenchannel"]) == []
    assert parse_cli(["pass", "show", "P-1"]).pass_id == "P-1"
    for bad in (["migrate"], ["db"], ["db", "downgrade"], ["pass", "show"], []):
        with pytest.raises(AssertionError):
            parse_cli(bad)


# ------------------------------------------------------------------------------------------------
# Dockerfile
# ------------------------------------------------------------------------------------------------


def _arg_defaults() -> dict[str, str]:
    defaults = {}
    for instr, args in stages()[0]:
        if instr == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            defaults[key] = value.strip('"')
    return defaults


def test_dockerfile_is_multistage_on_python_311_slim_and_non_root():
    groups = stages()[1:]
    assert len(groups) >= 2, "expected a build stage and a runtime stage"
    defaults = _arg_defaults()
    for group in groups:
        base = group[0][1].split()[0]
        base = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), base)
        assert base == "python:3.11-slim", base
    final = groups[-1]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the runtime stage must not run as root"
    # The runtime stage copies the built environment, not the sources.
    assert any(i == "COPY" and split_flags(a)[0].get("from") for i, a in final)
    assert not any(i == "ADD" for group in groups for i, _ in group), "use COPY, not ADD"


def test_dockerfile_installs_project_and_postgres_driver():
    runs = " ".join(a for i, a in dockerfile_instructions() if i == "RUN")
    assert re.search(r"pip install [^&]*--no-cache-dir [^&]*\.(\s|$)", runs), "pip install --no-cache-dir ."
    assert "psycopg[binary]" in runs


def _copies(from_context_only: bool = True) -> list[tuple[list[str], str]]:
    out = []
    for instr, args in dockerfile_instructions():
        if instr == "COPY":
            flags, items = split_flags(args)
            if from_context_only and "from" in flags:
                continue
            out.append((items[:-1], items[-1]))
    return out


def _expand(source: str) -> list[Path]:
    if glob.has_magic(source):
        return [Path(p) for p in glob.glob(str(ROOT / source))]
    path = ROOT / source
    return [path] if path.exists() else []


def test_every_copy_source_exists():
    copies = _copies()
    assert copies
    for sources, _dest in copies:
        for source in sources:
            assert not source.startswith(("/", "..")), f"COPY source {source} leaves the build context"
            if glob.has_magic(source):
                assert source in OPTIONAL_COPY_GLOBS, f"unexpected wildcard COPY source {source}"
                continue
            assert (ROOT / source).exists(), f"COPY source {source} does not exist in the repository"


def test_every_pyproject_package_is_copied():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = [pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = {posixpath.normpath(s) for sources, _ in _copies() for s in sources}
    assert "pyproject.toml" in copied
    readme = pyproject["project"].get("readme")
    if readme:
        assert readme in copied or any(fnmatch.fnmatchcase(readme, s) for s in copied), "readme not copied"
    for package in packages:
        top = package.split(".")[0]
        assert top in copied, f"package {top} is in pyproject.toml but not copied by the Dockerfile"


def test_healthcheck_runs_the_copied_script():
    final = stages()[-1]
    checks = [a for i, a in final if i == "HEALTHCHECK"]
    assert len(checks) == 1 and not checks[0].upper().startswith("NONE")
    argv = json.loads(checks[0][checks[0].index("CMD") + 3 :].strip())  # after the --interval etc. flags
    destinations = {dest for sources, dest in _copies() if "docker/healthcheck.py" in sources}
    assert destinations and destinations & set(argv), "HEALTHCHECK must run the script COPY'd from docker/"
    assert argv[0].startswith("/opt/venv/bin/python")


# --- docker/Dockerfile.dockerignore ---------------------------------------------------------------


def _ignore_rules() -> list[tuple[bool, re.Pattern]]:
    """(is_exception, regex) per line, following moby/patternmatcher semantics closely enough
    for this file: ** spans directories, * and ? do not cross '/', last match wins, and a
    pattern that matches a parent directory matches everything below it."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line[1:].strip() if exception else line).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            c = pattern[i]
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif c == "*":
                regex, i = regex + "[^/]*", i + 1
            elif c == "?":
                regex, i = regex + "[^/]", i + 1
            elif c == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(c), i + 1
        rules.append((exception, re.compile(regex + r"\Z")))
    return rules


def _sent_to_builder(rel: str, rules) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for exception, regex in rules:
        if any(regex.match(p) for p in prefixes):
            included = exception
    return included


def test_dockerignore_keeps_every_copy_source_and_drops_local_state():
    rules = _ignore_rules()
    assert _sent_to_builder("streams/cli/__init__.py", rules)
    missing = []
    for sources, _ in _copies():
        for source in sources:
            for path in _expand(source):
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    if "__pycache__" in rel.split("/") or rel.endswith((".pyc", ".pyo")):
                        continue
                    if not _sent_to_builder(rel, rules):
                        missing.append(rel)
    assert not missing, f"ignored by docker/Dockerfile.dockerignore but needed by COPY: {missing}"
    for local in (
        ".venv/pyvenv.cfg",
        ".git/HEAD",
        "tests/conftest.py",
        "streams/__pycache__/cli.cpython-311.pyc",
        ".greenchannel/greenchannel.db",
        "greenchannel.egg-info/PKG-INFO",
    ):
        assert not _sent_to_builder(local, rules), f"{local} would be sent to the builder"


# ------------------------------------------------------------------------------------------------
# docker/healthcheck.py
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthcheck():
    spec = importlib.util.spec_from_file_location("gc_docker_healthcheck", HEALTHCHECK_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def http_server(status: int):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b'{"status": "OK"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_web_probe(healthcheck, capsys):
    with http_server(200) as port:
        assert healthcheck.main({"GC_WEB_ENABLED": "true", "GC_WEB_PORT": str(port)}) == 0
    with http_server(503) as port:
        assert healthcheck.main({"GC_WEB_ENABLED": "1", "GC_WEB_PORT": str(port)}) == 1
    assert (
        healthcheck.main({"GC_WEB_ENABLED": "yes", "GC_WEB_PORT": str(_free_port()), "GC_HEALTHCHECK_TIMEOUT": "1"})
        == 1
    )


def test_healthcheck_as_the_container_runs_it():
    """Exit status of `python -I docker/healthcheck.py`, as the HEALTHCHECK instruction runs it."""
    with http_server(200) as port:
        env = {
            "GC_WEB_ENABLED": "true",
            "GC_WEB_PORT": str(port),
            "HTTP_PROXY": "http://192.0.2.1:9",
            "http_proxy": "http://192.0.2.1:9",
        }
        done = subprocess.run(
            [sys.executable, "-I", str(HEALTHCHECK_SCRIPT)], env=env, capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 0, done.stdout + done.stderr


def _fake_proc(tmp_path: Path, processes: dict[int, tuple[list[str], str]]) -> Path:
    for pid, (argv, state) in processes.items():
        d = tmp_path / str(pid)
        d.mkdir(parents=True)
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (d / "stat").write_text(f"{pid} ({posixpath.basename(argv[0])[:15]}) {state} 1 1 1 0 -1")
    (tmp_path / "self").mkdir(parents=True)
    return tmp_path


def test_healthcheck_process_fallback(healthcheck, tmp_path):
    init = (["/sbin/docker-init", "--", "greenchannel", "worker"], "S")
    worker = (["/opt/venv/bin/python", "/opt/venv/bin/greenchannel", "worker"], "S")
    env = {"GC_WEB_ENABLED": "false"}
    assert healthcheck.main(env, _fake_proc(tmp_path / "a", {1: init, 7: worker})) == 0
    assert healthcheck.main(env, _fake_proc(tmp_path / "b", {1: init})) == 1
    assert healthcheck.main(env, _fake_proc(tmp_path / "c", {1: (worker[0], "T")})) == 1


# ------------------------------------------------------------------------------------------------
# Kafka cluster
# ------------------------------------------------------------------------------------------------


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def test_three_kraft_nodes_share_cluster_id_and_voters(kafka_nodes):
    assert sorted(kafka_nodes) == ["kafka-1", "kafka-2", "kafka-3"]
    envs = {name: env_of(s) for name, s in kafka_nodes.items()}
    for name, service in kafka_nodes.items():
        assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", service["image"]), f"{name}: pin a 4.x tag"
    cluster_ids = {env["CLUSTER_ID"] for env in envs.values()}
    assert len(cluster_ids) == 1, cluster_ids
    cluster_id = cluster_ids.pop()
    assert len(cluster_id) == 22 and len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in envs.values()}
    assert len(voters) == 1, voters
    parsed = {}
    for voter in voters.pop().split(","):
        node_id, _, address = voter.partition("@")
        host, _, port = address.rpartition(":")
        parsed[int(node_id)] = (host, int(port))
    node_ids = {int(env["KAFKA_NODE_ID"]): name for name, env in envs.items()}
    assert len(node_ids) == 3, "node ids must be unique"
    assert set(parsed) == set(node_ids), "every node is a voter and every voter a node"
    for node_id, name in node_ids.items():
        env = envs[name]
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        listeners = _listeners(env["KAFKA_LISTENERS"])
        controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        assert controller in listeners and "SASL_SSL" in listeners
        assert parsed[node_id] == (kafka_nodes[name].get("hostname", name), listeners[controller][1])
        protocol_map = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert set(listeners) <= set(protocol_map)
        advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
        assert advertised == {"SASL_SSL": (name, listeners["SASL_SSL"][1])}, f"{name}: advertise the service name"


def test_kafka_replication_settings(kafka_nodes):
    for name, service in kafka_nodes.items():
        env = env_of(service)
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2", name
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
        assert env["KAFKA_NUM_PARTITIONS"] == "12", name


def test_kafka_health_and_storage(kafka_nodes, compose):
    sources = set()
    for name, service in kafka_nodes.items():
        test = service["healthcheck"]["test"]
        assert "kafka-broker-api-versions.sh" in " ".join(test if isinstance(test, list) else [test])
        assert "--bootstrap-server localhost:9092" in " ".join(test if isinstance(test, list) else [test])
        log_dir = env_of(service)["KAFKA_LOG_DIRS"]
        data = [m for m in mounts_of(service) if m["target"] == log_dir]
        assert data and data[0]["type"] == "volume" and data[0]["source"] in compose["volumes"], name
        sources.add(data[0]["source"])
    assert len(sources) == 3, "each node needs its own data volume"


# ------------------------------------------------------------------------------------------------
# greenchannel services
# ------------------------------------------------------------------------------------------------


def test_worker_scaling_and_guarantees(services, kafka_nodes):
    worker = services["worker"]
    assert uses_project_image(worker)
    assert int(worker["deploy"]["replicas"]) >= 2
    assert "container_name" not in worker, "a fixed container name prevents replicas"
    assert not [p for p in worker.get("ports") or [] if ":" in str(p) or isinstance(p, dict)], (
        "replicas cannot share a published host port"
    )
    assert (worker.get("healthcheck") or {}).get("disable") is not True
    env = env_of(worker)
    assert env["GC_PROCESSING_GUARANTEE"] == "exactly_once"
    assert env["GC_REPLICATION_FACTOR"] == "3"
    assert env["GC_PARTITIONS"] == "12"
    settings = settings_from(env)
    assert settings.web_enabled, "the image's health check needs the Faust web port"
    assert settings.replication_factor <= len(kafka_nodes)
    # Each partition's tables kept by another worker too (a takeover reads the changelog's tail):
    # a standby needs a worker of its own beside the active one.
    assert 1 <= settings.standby_replicas < int(worker["deploy"]["replicas"])
    advertised = {
        ":".join(map(str, _listeners(env_of(s)["KAFKA_ADVERTISED_LISTENERS"])["SASL_SSL"]))
        for s in kafka_nodes.values()
    }
    assert set(settings.bootstrap.split(",")) == advertised, "GC_BROKER_URL must name all three brokers"
    assert settings.partitions == int(env_of(next(iter(kafka_nodes.values())))["KAFKA_NUM_PARTITIONS"])


def test_worker_start_order(services, kafka_nodes):
    deps = depends_on(services["worker"])
    for one_shot in ("keys", "topics", "migrate"):
        assert deps.get(one_shot) == "service_completed_successfully", one_shot
    topics_deps = depends_on(services["topics"])
    for node in kafka_nodes:
        assert topics_deps.get(node) == "service_healthy", node
    assert depends_on(services["migrate"]).get("postgres") == "service_healthy"


def test_signing_keys_are_one_shared_volume(services, compose):
    keys, worker = services["keys"], services["worker"]
    key_dir = env_of(worker)["GC_KEY_DIR"]
    assert env_of(keys)["GC_KEY_DIR"] == key_dir
    worker_mount = [m for m in mounts_of(worker) if m["target"] == key_dir]
    keys_mount = [m for m in mounts_of(keys) if m["target"] == key_dir]
    assert worker_mount and keys_mount, "GC_KEY_DIR must be a mounted volume in both services"
    assert worker_mount[0]["type"] == keys_mount[0]["type"] == "volume"
    assert worker_mount[0]["source"] == keys_mount[0]["source"] in compose["volumes"]
    assert worker_mount[0]["read_only"] and not keys_mount[0]["read_only"]
    # The worker's data directory must not be the shared key volume (or shared at all).
    assert env_of(worker)["GC_DATA_DIR"] != key_dir


def test_projector_runs_beside_the_worker(services):
    assert "projector" in services, "nothing would write the database: the worker no longer projects"
    projector, worker = services["projector"], services["worker"]
    assert uses_project_image(projector)
    assert projector.get("image") == worker.get("image") and projector.get("build") == worker.get("build")
    assert projector["command"] == ["projector"]
    assert "entrypoint" not in projector, "the image's ENTRYPOINT (greenchannel) runs the command"
    assert int(projector["deploy"]["replicas"]) >= 2, "a second projector shares the partitions / stands by"
    assert "container_name" not in projector, "a fixed container name prevents replicas"
    assert not [p for p in projector.get("ports") or [] if ":" in str(p) or isinstance(p, dict)], (
        "replicas cannot share a published host port"
    )
    assert projector.get("restart") == worker.get("restart") == "unless-stopped"
    assert projector.get("init") is worker.get("init") is True, "SIGTERM must reach the projector (it commits then)"
    assert projector.get("stop_grace_period"), "time to write and commit the batch in hand"


def test_projector_shares_the_workers_settings(services, monkeypatch, made_secrets, compose):
    from streams import projector as projector_module

    projector_env, worker_env = env_of(services["projector"]), env_of(services["worker"])
    for key in (
        "GC_BROKER_URL",
        "GC_DATABASE_URL",
        "GC_APP_ID",
        "GC_TOPIC_PREFIX",
        "GC_PARTITIONS",
        "GC_PROCESSING_GUARANTEE",
    ):
        assert projector_env.get(key) == worker_env.get(key), key
    assert "GC_APP_ID" in projector_env, "set the app id explicitly: the projector group is named after it"
    settings = mounted(settings_from(projector_env), services["projector"], compose, made_secrets)
    worker_settings = settings_from(worker_env)
    assert (settings.bootstrap, settings.database_url, settings.app_id, settings.topic_prefix) == (
        worker_settings.bootstrap,
        worker_settings.database_url,
        worker_settings.app_id,
        worker_settings.topic_prefix,
    )
    assert settings.processing_guarantee == worker_settings.processing_guarantee == "exactly_once"
    # What the projector would do with these settings (the consumer is recorded, not started).
    monkeypatch.setattr(projector_module, "AIOKafkaConsumer", lambda **kwargs: kwargs)
    consumer = projector_module.Projector(settings).consumer()
    assert consumer["isolation_level"] == "read_committed", "aborted worker transactions would reach the database"
    assert consumer["group_id"] == f"{worker_settings.app_id}-projector"
    assert consumer["bootstrap_servers"] == worker_settings.bootstrap


def test_projector_start_order(services, kafka_nodes):
    deps = depends_on(services["projector"])
    assert deps.get("migrate") == "service_completed_successfully", "the schema must be at head first"
    assert deps.get("topics") == "service_completed_successfully", "the topics, on a healthy cluster, first"
    assert deps.get("postgres") == "service_healthy"
    # The broker's health is reached as the worker reaches it: topics waits for every node.
    topics_deps = depends_on(services["topics"])
    for node in kafka_nodes:
        assert topics_deps.get(node) == "service_healthy", node
    assert "keys" not in deps and not mounts_of(services["projector"]), "the projector signs nothing"


def test_projector_health_check_needs_no_web_port(services, healthcheck, tmp_path):
    """The projector serves no HTTP: with GC_WEB_ENABLED the image's probe of GC_WEB_PORT would
    call it unhealthy forever. Off, the probe checks that the greenchannel process runs."""
    projector = services["projector"]
    assert (projector.get("healthcheck") or {}).get("disable") is not True
    env = env_of(projector)
    assert not settings_from(env).web_enabled
    assert not healthcheck.web_enabled(env)
    init = (["/sbin/docker-init", "--", "greenchannel", "projector"], "S")
    running = (["/opt/venv/bin/python", "/opt/venv/bin/greenchannel", "projector"], "S")
    assert healthcheck.main(env, _fake_proc(tmp_path / "a", {1: init, 7: running})) == 0
    assert healthcheck.main(env, _fake_proc(tmp_path / "b", {1: init})) == 1


def test_topics_job_creates_the_expected_topics(services):
    from streams.handlers import Topics

    topics_env, worker_env = env_of(services["topics"]), env_of(services["worker"])
    for key in ("GC_BROKER_URL", "GC_PARTITIONS", "GC_REPLICATION_FACTOR"):
        assert topics_env[key] == worker_env[key], key
    settings = settings_from(topics_env)
    names = Topics.with_prefix(settings.topic_prefix)
    assert names.public() + [names.pass_events] == EXPECTED_TOPICS  # what `greenchannel topics` creates
    assert (settings.partitions, settings.replication_factor) == (12, 3)


def test_postgres_and_database_url(services):
    from sqlalchemy.engine import make_url

    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in " ".join(test if isinstance(test, list) else [test])
    assert any(m["target"] == "/var/lib/postgresql/data" and m["type"] == "volume" for m in mounts_of(postgres))
    pg_env = env_of(postgres)
    for name in ("worker", "migrate", "projector"):
        url = make_url(env_of(services[name])["GC_DATABASE_URL"])
        assert url.drivername == "postgresql+psycopg", name
        assert (url.host, url.port) == ("postgres", 5432)
        assert (url.username, url.password, url.database) == (
            pg_env["POSTGRES_USER"],
            pg_env["POSTGRES_PASSWORD"],
            pg_env["POSTGRES_DB"],
        )


# ------------------------------------------------------------------------------------------------
# Prometheus
# ------------------------------------------------------------------------------------------------


def test_prometheus_scrapes_every_worker_and_projector_where_they_serve_metrics(compose, services):
    prometheus = services["prometheus"]
    [config] = prometheus["configs"]
    assert config["target"] == "/etc/prometheus/prometheus.yml"
    assert f"--config.file={config['target']}" in prometheus["command"]
    scrape = yaml.safe_load(compose["configs"][config["source"]]["content"])
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert set(jobs) == {"worker", "projector"}
    ports = {
        "worker": int(env_of(services["worker"])["GC_WEB_PORT"]),
        "projector": int(env_of(services["projector"])["GC_METRICS_PORT"]),
    }
    for name, job in jobs.items():
        [sd] = job["dns_sd_configs"]
        assert sd["names"] == [name] and sd["type"] == "A" and sd["port"] == ports[name], name
        assert job.get("metrics_path", "/metrics") == "/metrics"
    # Reachable from another container: bound beyond loopback, served at all.
    worker, projector = env_of(services["worker"]), env_of(services["projector"])
    assert worker["GC_WEB_ENABLED"] == "true" and worker["GC_WEB_BIND"] == "0.0.0.0"
    assert projector["GC_METRICS_BIND"] == "0.0.0.0"
    assert set(prometheus["depends_on"]) == {"worker", "projector"}
    assert any(m["target"] == "/prometheus" and m["source"] in compose["volumes"] for m in mounts_of(prometheus))


# ------------------------------------------------------------------------------------------------
# Security: SASL_SSL listeners only, credentials as secrets, the ACLs of streams/dev/secure.py
# ------------------------------------------------------------------------------------------------


def kafka_properties(env: dict[str, str]) -> dict[str, str]:
    """A node's KAFKA_* variables as the server properties docker/kafka-secure.sh writes."""
    out = {}
    for name, value in env.items():
        if name.startswith("KAFKA_") and name not in ("KAFKA_HEAP_OPTS", "KAFKA_OPTS"):
            key = name[6:].lower().replace("___", "-").replace("__", "@").replace("_", ".").replace("@", "_")
            out[key] = value
    return out


@pytest.fixture(scope="module")
def made_secrets(tmp_path_factory) -> Path:
    """What `python -m streams.dev.secure DIR --host kafka-1 …` makes: the secrets' files."""
    target = tmp_path_factory.mktemp("docker") / "secrets"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.dev.secure",
            str(target),
            "--host",
            "kafka-1",
            "--host",
            "kafka-2",
            "--host",
            "kafka-3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return target


def secret_files(compose, made: Path) -> dict[str, Path]:
    """Each declared secret's file, in the directory `python -m streams.dev.secure` made."""
    out = {}
    for name, spec in compose["secrets"].items():
        rel = Path(spec["file"])  # ./secrets/… (Path drops the ./)
        assert rel.parts[0] == "secrets", f"secret {name}: not under docker/secrets/"
        out[name] = made / Path(*rel.parts[1:])
    return out


def mounted(settings, service: dict, compose, made: Path):
    """`settings` as inside the container: /run/secrets/NAME is the secret's file."""
    files = secret_files(compose, made)
    mounts = {f"/run/secrets/{name}": files[name] for name in service.get("secrets") or []}
    update = {}
    for field in ("kafka_password_file", "kafka_ca_file"):
        value = getattr(settings, field)
        if value is not None:
            assert str(value) in mounts, f"{field}={value}: not a secret of this service"
            update[field] = mounts[str(value)]
    return settings.model_copy(update=update)


def test_kafka_listens_on_sasl_ssl_only_with_the_authorizer(kafka_nodes):
    for name, node in kafka_nodes.items():
        props = kafka_properties(env_of(node))
        protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
        assert set(protocols.values()) == {"SASL_SSL"}, f"{name}: a listener without TLS and SASL"
        assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
        assert props["allow.everyone.if.no.acl.found"] == "false"
        assert props["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
        assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
        assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
        assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
        assert set(props["super.users"].split(";")) == {"User:admin", "User:controller"}
        assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
        assert (
            {props["ssl.keystore.location"], props["ssl.truststore.location"]}
            == {f"/run/secrets/{s}" for s in ("kafka-keystore", "kafka-ca")}
            <= {f"/run/secrets/{s}" for s in node["secrets"]}
        )


def test_kafka_nodes_match_the_local_secure_cluster(kafka_nodes, made_secrets):
    """The compose nodes and `greenchannel broker --kind kafka --secure` configure security alike."""
    from streams.dev.kafka import secure_listeners
    from streams.dev.secure import SecureDir

    local = secure_listeners(SecureDir(made_secrets), 9092, 9093)
    host_bound = {
        "listeners",
        "advertised.listeners",
        "ssl.keystore.location",
        "ssl.truststore.location",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config",
        "listener.name.controller.plain.sasl.jaas.config",
    }
    for name, node in kafka_nodes.items():
        props = kafka_properties(env_of(node))
        differ = {k: (v, props.get(k)) for k, v in local.items() if k not in host_bound and props.get(k) != str(v)}
        assert not differ, f"{name}: {differ}"
        script = (DOCKER / "kafka-secure.sh").read_text()
        for jaas in (
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config",
            "listener.name.controller.plain.sasl.jaas.config",
        ):
            assert f"{jaas}=" in script, f"docker/kafka-secure.sh does not write {jaas}"


def test_kafka_scripts_parse():
    for script in ("kafka-secure.sh", "kafka-setup.sh"):
        done = subprocess.run(["bash", "-n", str(DOCKER / script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_acl_arguments_are_the_table_of_streams_secure(services):
    env = env_of(services["worker"])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.dev.secure",
            "--acl-args",
            "--prefix",
            env.get("GC_TOPIC_PREFIX", "gc."),
            "--app-id",
            env["GC_APP_ID"],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in (DOCKER / "acls.args").read_text().splitlines() if line and not line.startswith("#")]
    assert lines == done.stdout.splitlines(), "docker/acls.args is stale: python -m streams.dev.secure --acl-args"
    setup = services["kafka-setup"]
    assert {c["source"] for c in setup["configs"]} == {"kafka-setup-script", "kafka-acls"}
    for node in ("kafka-1", "kafka-2", "kafka-3"):
        assert depends_on(setup).get(node) == "service_healthy"
    for service in ("worker", "projector"):
        assert depends_on(services[service]).get("kafka-setup") == "service_completed_successfully", service


def test_every_kafka_client_service_is_its_own_principal(services, compose, made_secrets):
    from streams.connection import Connection

    principals = {}
    for name, service in services.items():
        env = env_of(service)
        if not uses_project_image(service) or name == "migrate":
            continue
        settings = mounted(settings_from(env), service, compose, made_secrets)
        connection = Connection.from_settings(settings)
        assert connection.secure and connection.sasl_mechanism == "SCRAM-SHA-512", name
        assert connection.kwargs()["ssl_context"].verify_mode.name == "CERT_REQUIRED", name
        assert connection.password == (made_secrets / "passwords" / connection.username).read_text().strip(), name
        principals[name] = connection.username
    assert principals == {
        "topics": "admin",
        "worker": "worker",
        "projector": "projector",
        "keys": "keyadmin",
        "gateway": "gateway",
    }


def test_secrets_stay_out_of_the_repository(compose):
    for name, spec in compose["secrets"].items():
        path = (DOCKER / spec["file"]).resolve()
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", str(path)], cwd=ROOT)
        assert ignored.returncode == 0, f"secret {name}: {path} is not git-ignored"


def test_the_made_secrets_are_private_and_name_the_broker_hosts(made_secrets):
    from cryptography import x509

    for path in [
        made_secrets / "broker.pem",
        made_secrets / "credentials.json",
        *(made_secrets / "passwords").iterdir(),
    ]:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    cert = x509.load_pem_x509_certificates((made_secrets / "broker.pem").read_bytes())[0]
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"kafka-1", "kafka-2", "kafka-3", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
