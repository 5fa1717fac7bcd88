"""The Docker image, checked without a Docker engine: the Dockerfile's instructions, the build
context, the wheel `pip install .` builds from it, the baked gateway.yaml, the HEALTHCHECK
command run for real against /healthz, and the compose example's wiring."""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from whazing_gateway.cli import build_parser
from whazing_gateway.config import read_settings
from whazing_gateway.ops.server import OpsServer

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"


@dataclass
class Instr:
    name: str
    args: str
    line: int

    def exec_form(self) -> list[str]:
        """JSON (exec) form arguments; fails the test for shell form."""
        text = self.args
        if self.name == "HEALTHCHECK":
            text = text[text.index("CMD") + 3:]
        value = json.loads(text.strip())
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


def parse_dockerfile(text: str) -> list[list[Instr]]:
    """Instructions grouped by build stage (continuations joined, comments dropped)."""
    stages: list[list[Instr]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        name, _, args = buf.partition(" ")
        ins = Instr(name.upper(), args.strip(), start)
        buf = ""
        if ins.name == "FROM":
            stages.append([])
        assert stages, f"line {start}: {ins.name} before FROM"
        stages[-1].append(ins)
    assert not buf, "Dockerfile ends inside a continuation"
    return stages


@pytest.fixture(scope="module")
def stages() -> list[list[Instr]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages) -> dict[str, list[Instr]]:
    by_name: dict[str, list[Instr]] = {}
    for ins in stages[-1]:
        by_name.setdefault(ins.name, []).append(ins)
    return by_name


def test_base_images_are_python_313_slim(stages):
    assert len(stages) >= 1
    for stage in stages:
        image = stage[0].args.split()[0]
        assert image == "python:3.13-slim", stage[0]


def test_runs_as_a_non_root_user_created_in_the_image(final):
    users = final["USER"]
    assert users[-1].args == "gateway"
    run_text = " ".join(i.args for i in final["RUN"])
    assert "useradd" in run_text
    words = shlex.split(run_text)
    uid = int(words[words.index("--uid") + 1])
    assert uid != 0
    # USER comes after the last RUN that needs root (chown) and before the entrypoint.
    assert users[-1].line > max(i.line for i in final["RUN"])
    assert users[-1].line < final["ENTRYPOINT"][-1].line


def test_workdir_volumes_ports_entrypoint_cmd(final):
    assert final["WORKDIR"][-1].args == "/app"
    volumes = final["VOLUME"][-1].exec_form()
    assert set(volumes) == {"/app/data", "/app/rules"}
    exposed = {p for e in final["EXPOSE"] for p in e.args.split()}
    assert exposed == {"8080", "9090", "8081"}
    assert final["ENTRYPOINT"][-1].exec_form() == ["whazing-gateway"]
    assert final["CMD"][-1].exec_form() == ["run", "--config", "/app/gateway.yaml"]


def test_entrypoint_is_the_installed_script_and_cmd_parses(final):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["whazing-gateway"] == "whazing_gateway.cli:main"
    args = build_parser().parse_args(final["CMD"][-1].exec_form())
    assert args.command == "run" and args.config == "/app/gateway.yaml" and not args.web


def test_build_stage_installs_the_project_and_final_stage_gets_it(stages):
    build_runs = " ".join(i.args for i in stages[0] if i.name == "RUN")
    assert "pip install ." in build_runs
    copies = [i.args for i in stages[-1] if i.name == "COPY"]
    if len(stages) > 1:
        assert any(c.startswith("--from=") and "/opt/venv" in c for c in copies)


def test_baked_config_matches_volumes_and_ports(final):
    copies = [i.args.split() for i in final["COPY"] if not i.args.startswith("--from")]
    assert ["deploy/gateway.docker.yaml", "/app/gateway.yaml"] in copies
    s, issues = read_settings(ROOT / "deploy" / "gateway.docker.yaml", env={})
    assert issues == []
    exposed = {int(p) for e in final["EXPOSE"] for p in e.args.split()}
    assert {s.listen_port, s.metrics_port, s.web_port} == exposed
    assert (str(s.data_dir), str(s.rules_dir)) == ("/app/data", "/app/rules")
    assert str(s.sqlite_path).startswith("/app/data/")
    # Reachable from outside the container (probes, Prometheus, Traefik).
    assert s.listen_host == "0.0.0.0" and s.metrics_host == "0.0.0.0"
    assert s.log_format == "json"
    # Everything a deployment changes comes from the environment.
    s2, issues = read_settings(ROOT / "deploy" / "gateway.docker.yaml", env={
        "WHAZING_UPSTREAM": "http://whazing-backend:3000", "WGW_METRICS_PORT": "9191",
        "WGW_OBSERVER": "false", "WGW_DATA_DIR": "/srv/gw", "WGW_LOG_LEVEL": "debug",
    })
    assert issues == []
    assert (s2.upstream, s2.metrics_port, s2.observer_enabled, str(s2.data_dir), s2.log_level) == (
        "http://whazing-backend:3000", 9191, False, "/srv/gw", "debug")


def healthcheck_argv(final) -> list[str]:
    hc = final["HEALTHCHECK"][-1]
    assert "--interval=" in hc.args and "--timeout=" in hc.args and "--start-period=" in hc.args
    argv = hc.exec_form()
    assert argv[0] == "python" and argv[1] == "-c"
    assert "/healthz" in argv[2] and "9090" in argv[2]
    return argv


@pytest.mark.slow
async def test_healthcheck_command_against_a_real_ops_server(final):
    argv = healthcheck_argv(final)
    cmd = [sys.executable, *argv[1:]]  # the image's `python` is the venv's, as here
    ops = OpsServer("127.0.0.1", 0)
    await ops.start()
    try:
        env = {**os.environ, "WGW_METRICS_PORT": str(ops.port)}
        ok = await _run(cmd, env)
        assert ok.returncode == 0, ok.stderr
    finally:
        await ops.stop()
    # Same port, nothing listening any more: unhealthy.
    bad = await _run(cmd, env)
    assert bad.returncode != 0


async def _run(cmd: list[str], env: dict[str, str]):
    import asyncio

    return await asyncio.to_thread(
        subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=60
    )


# --- the build context and the wheel `pip install .` builds ---------------------------------

def _dockerignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        rules.append((neg, line[1:] if neg else line))
    return rules


def _ignored(rel: str, rules) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent folder
    matches everything under it."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for neg, pattern in rules:
        pat = pattern.rstrip("/")
        hit = any(
            fnmatch.fnmatchcase(p, pat)
            or (pat.startswith("**/") and fnmatch.fnmatchcase(p.split("/")[-1], pat[3:]))
            for p in prefixes
        )
        if hit:
            ignored = not neg
    return ignored


def build_context(dest: Path) -> list[str]:
    """Copy what `docker build .` would send into dest; return the relative paths."""
    rules = _dockerignore_rules()
    sent = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        dirnames[:] = [d for d in dirnames if d not in (".git", ".venv", ".venv-ci")]
        for f in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, f)).replace(os.sep, "/")
            if not _ignored(rel, rules):
                sent.append(rel)
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, dest / rel)
    return sorted(sent)


def test_context_is_an_allow_list(tmp_path):
    sent = build_context(tmp_path)
    assert "pyproject.toml" in sent and "deploy/gateway.docker.yaml" in sent
    assert "whazing_gateway/cli/__init__.py" in sent and "whazing_gateway/ops/server.py" in sent
    for rel in sent:
        assert not rel.startswith(("tests/", "data/", ".git", ".venv", "docs/", "bench/")), rel
        assert "__pycache__" not in rel and not rel.endswith(".pyc"), rel
    rules = _dockerignore_rules()
    for secret_like in (".env", "gateway.yaml", "data/outbox.db", "capture.mitm"):
        assert _ignored(secret_like, rules), secret_like
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("readme")
    if isinstance(readme, str):
        assert not _ignored(readme, rules)  # setuptools reads it during `pip install .`


@pytest.mark.slow
def test_wheel_built_from_the_context_has_every_module_and_the_script(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    build_context(ctx)
    dist = tmp_path / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(ctx)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    wheel, = dist.glob("whazing_gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    repo_files = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "whazing_gateway").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    missing = sorted(repo_files - names)
    assert not missing, f"files under whazing_gateway/ the image would not have (package-data?): {missing}"
    # The production image carries neither the stand-in nor the JWT library only it uses.
    assert not any(n.startswith("whazing_standin/") for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [ln for ln in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
                if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert not any("pyjwt" in ln.lower() for ln in requires), requires
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "whazing-gateway = whazing_gateway.cli:main" in text


# --- the compose example ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _labels(service: dict) -> dict[str, str]:
    labels = service.get("labels", {})
    if isinstance(labels, list):
        labels = dict(item.split("=", 1) for item in labels)
    return labels


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def test_compose_gateway_builds_this_repo_with_its_volumes(compose):
    gw = compose["services"]["gateway"]
    ctx = (COMPOSE.parent / gw["build"]["context"]).resolve()
    assert ctx == ROOT and (ctx / gw["build"]["dockerfile"]).is_file()
    targets = {v.split(":")[1]: v.split(":")[0] for v in gw["volumes"]}
    assert set(targets) == {"/app/data", "/app/rules"}
    assert targets["/app/data"] in compose["volumes"]  # a named volume: owned by the image's user
    assert gw["restart"] == "always" and "backend" in gw["depends_on"]


def test_compose_traffic_goes_traefik_gateway_backend(compose):
    services = compose["services"]
    backend, gw, front = services["backend"], services["gateway"], services["frontend"]
    assert _labels(backend).get("traefik.enable") == "false"
    gl = _labels(gw)
    assert gl["traefik.enable"] == "true"
    assert gl["traefik.http.routers.backend.rule"].startswith("Host(`backend.")
    s, issues = read_settings(ROOT / "deploy" / "gateway.docker.yaml", env=_env(gw))
    assert issues == []
    assert int(gl["traefik.http.services.backend.loadbalancer.server.port"]) == s.listen_port
    # The upstream names the backend service on its exposed port.
    host_port = s.upstream.split("://", 1)[1]
    host, port = host_port.split(":")
    assert host in services and port in [str(p) for p in services[host]["expose"]]
    # The browser's side is untouched: the frontend keeps its router and its .env.
    assert _labels(front)["traefik.enable"] == "true"
    assert any(v.endswith(":/app/.env") for v in front["volumes"])
    shared = set(gw["networks"]) & set(backend["networks"]) & set(services["traefik"]["networks"])
    assert shared


def test_env_example_names_every_variable_the_shipped_rules_use():
    import re

    example = (ROOT / "deploy" / "gateway.env.example").read_text()
    defined = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M))
    used = set()
    for f in (ROOT / "rules").glob("*.yaml"):
        text = "\n".join(line.split(" #")[0] for line in f.read_text().splitlines()
                         if not line.lstrip().startswith("#"))
        used |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    settings, _ = read_settings(ROOT / "deploy" / "gateway.docker.yaml", env={})
    used |= {settings.observer_email_env, settings.observer_password_env, "WGW_WEB_PASSWORD"}
    assert used <= defined, sorted(used - defined)
