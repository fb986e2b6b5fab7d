"""docker-compose.yml, its image and its proxy, checked against the code without a Docker engine.

Each service's command, environment, health check and dependencies are read from the compose file (after
compose's own `${VAR:-default}` interpolation) and compared with what the code actually reads: the
pydantic-settings class each service's `__main__` builds, the modules that exist, the Dockerfile, and the
nginx configuration, which is parsed and asked which upstream serves a given path.
"""

import fnmatch
import functools
import re
import shlex
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from pydantic import AliasChoices
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from deploy.local.stack import StackSettings
from libs.common.settings import DatabaseSettings
from services.executor.settings import ExecutorSettings
from services.gateway.settings import GatewaySettings
from services.orchestrator.settings import OrchestratorSettings
from services.progress.settings import ProgressSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
ENV_EXAMPLE = ROOT / ".env.example"

SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "orchestrator": OrchestratorSettings,
    "executor": ExecutorSettings,
    "progress": ProgressSettings,
}
"""The settings class each service module (`python -m services.<module>`) builds."""

APP_SERVICES: dict[str, str] = {
    "gateway": "gateway",
    "orchestrator": "orchestrator",
    "executor-1": "executor",
    "executor-2": "executor",
    "executor-3": "executor",
    "progress": "progress",
}
"""Compose service -> the module it runs."""

ONE_SHOT = {"migrate", "s3-init"}
INFRASTRUCTURE = {"postgres", "redis", "localstack"}
PROXY = "nginx"
EXPECTED_SERVICES = set(APP_SERVICES) | ONE_SHOT | INFRASTRUCTURE | {PROXY}
PUBLIC_PORT = 8000

ADDRESSES = {"DATABASE_URL": "postgres", "REDIS_URL": "redis", "S3_ENDPOINT_URL": "localstack"}
"""Address variables and the compose service each must point at, whatever the user's `.env` says."""

REQUIRED_SECRETS = {"STREAM_TOKEN_SECRET": "s" * 43}
"""What compose refuses to start without (`${VAR:?}`): secrets have no safe default, so a user must set them."""


COMPOSE_ONLY_VARIABLES = {"POSTGRES_PASSWORD"}
"""Variables compose interpolates that no settings class reads (they configure the postgres image)."""

SPEC_VARIABLES = {
    "DATABASE_URL",
    "REDIS_URL",
    "S3_BUCKET",
    "S3_REGION",
    "S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MAX_PARALLEL_WORKERS",
}
"""The configuration the specification (section 6) and the original README name."""

STREAM_PATH = f"/api/v1/progress/{uuid.uuid4()}/stream"
GATEWAY_PATHS = (
    f"/api/v1/progress/{uuid.uuid4()}",
    "/api/v1/process",
    "/api/v1/status",
    "/api/v1/objects/object-123",
    f"/api/v1/objects/{uuid.uuid4()}/cancel",
    "/docs",
    "/openapi.json",
    "/health",
)


# --- compose: loading and interpolation ----------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


class InterpolationError(Exception):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of one value. A variable without a default that is unset is an error here,
    where compose would warn and substitute an empty string."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            name, op, arg = match["named"], "", ""
        else:
            braced = _BRACED.fullmatch(match["braced"])
            if braced is None or "$" in (braced["arg"] or ""):
                raise InterpolationError(f"unsupported interpolation {match[0]!r}")
            name, op, arg = braced["name"], braced["op"] or "", braced["arg"] or ""
        value = env.get(name)
        missing = not value if op.startswith(":") else value is None
        if op in ("-", ":-"):
            return arg if missing else str(value)
        if op in ("+", ":+"):
            return "" if missing else arg
        if missing and not op:
            raise InterpolationError(f"{match[0]} has no default: unset, compose substitutes an empty string")
        if missing:
            raise InterpolationError(f"{match[0]} is required and unset: {arg or 'no message'}")
        return str(value)

    return _VARIABLE.sub(replace, text)


def interpolated(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolated(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, env) for key, value in node.items()}
    return node


@functools.cache
def raw_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    document: dict[str, Any] = interpolated(raw_compose(), REQUIRED_SECRETS if env is None else env)
    return document


def services(env: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose(env)["services"]
    return found


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        # "NAME" alone passes the host's variable through: record it with an empty value.
        return {name: value for name, _, value in (str(entry).partition("=") for entry in raw)}
    return {str(name): "" if value is None else str(value) for name, value in raw.items()}


def command_of(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command")
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command or []]


def interpolated_names(node: Any) -> set[str]:
    if isinstance(node, str):
        names = set()
        for match in _VARIABLE.finditer(node):
            if match["named"]:
                names.add(match["named"])
            elif match["braced"] is not None and (braced := _BRACED.fullmatch(match["braced"])):
                names.add(braced["name"])
        return names
    if isinstance(node, list):
        return {name for item in node for name in interpolated_names(item)}
    if isinstance(node, dict):
        return {name for value in node.values() for name in interpolated_names(value)}
    return set()


# --- .env.example ---------------------------------------------------------------------------------------

_ASSIGNMENT = re.compile(r"(?P<commented>#\s*)?(?:export\s+)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)")


def env_example() -> tuple[dict[str, str], set[str]]:
    """The active assignments of .env.example, and the names it mentions in commented-out ones."""
    active: dict[str, str] = {}
    commented: set[str] = set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = _ASSIGNMENT.fullmatch(line.strip())
        if match is None:
            continue
        if match["commented"]:
            commented.add(match["name"])
            continue
        assert match["name"] not in active, f".env.example sets {match['name']} twice"
        active[match["name"]] = match["value"].strip().strip("'\"")
    return active, commented


ENVIRONMENTS = ("no .env", ".env copied from .env.example")


def user_environment(which: str) -> dict[str, str]:
    return {**REQUIRED_SECRETS, **({} if which == ENVIRONMENTS[0] else env_example()[0])}


# --- settings classes -----------------------------------------------------------------------------------


def env_names(settings: type[BaseSettings]) -> dict[str, str]:
    """Upper-cased environment variable -> field name, for every variable the class reads."""
    prefix = str(settings.model_config.get("env_prefix") or "")
    names: dict[str, str] = {}
    for name, info in settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, str):
            names[alias.upper()] = name
        elif isinstance(alias, AliasChoices):
            names.update({choice.upper(): name for choice in alias.choices if isinstance(choice, str)})
        else:
            names[(prefix + name).upper()] = name
    return names


def from_values_only(settings: type[BaseSettings], values: Mapping[str, str]) -> BaseSettings:
    """Builds the settings from `values` alone: not from this process's environment or a .env file."""

    def only_init(
        cls: type[BaseSettings],
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    namespace = {"settings_customise_sources": classmethod(only_init)}
    isolated: type[BaseSettings] = type(f"Isolated{settings.__name__}", (settings,), namespace)
    fields = env_names(settings)
    return isolated.model_validate({fields[name.upper()]: value for name, value in values.items()})


def secrets_for(settings: type[BaseSettings]) -> dict[str, str]:
    """The required secrets this settings class reads: a user of compose has set them."""
    return {name: value for name, value in REQUIRED_SECRETS.items() if name in env_names(settings)}


def read_by_some_settings() -> set[str]:
    classes: list[type[BaseSettings]] = [*SETTINGS.values(), DatabaseSettings, StackSettings]
    return {name for settings in classes for name in env_names(settings)}


# --- compose: the services ------------------------------------------------------------------------------


def test_every_expected_service_is_defined() -> None:
    missing = EXPECTED_SERVICES - set(services())
    assert not missing, f"docker-compose.yml lacks {sorted(missing)}"


def test_every_service_module_is_deployed_and_known_here() -> None:
    modules = {path.parent.name for path in (ROOT / "services").glob("*/__main__.py")}
    assert modules == set(SETTINGS), "a service was added or removed: update SETTINGS and APP_SERVICES"
    assert set(APP_SERVICES.values()) == modules


@pytest.mark.parametrize("module", sorted(SETTINGS))
def test_settings_class_is_the_one_the_service_builds(module: str) -> None:
    source = (ROOT / "services" / module / "__main__.py").read_text(encoding="utf-8")
    assert f"{SETTINGS[module].__name__}()" in source


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_service_runs_its_module(name: str) -> None:
    command = command_of(services()[name])
    module = APP_SERVICES[name]
    assert command == ["python", "-m", f"services.{module}"], f"{name}: command is {command}"
    assert (ROOT / "services" / module / "__main__.py").is_file()


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_service_sets_only_variables_its_settings_read(name: str) -> None:
    service = services()[name]
    assert "env_file" not in service, f"{name}: env_file hides what the service is given; list variables"
    unknown = set(environment_of(service)) - set(env_names(SETTINGS[APP_SERVICES[name]]))
    assert not unknown, f"{name} sets {sorted(unknown)}, which {SETTINGS[APP_SERVICES[name]].__name__} never reads"


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_service_provides_every_setting_without_a_default(name: str) -> None:
    settings = SETTINGS[APP_SERVICES[name]]
    required = {
        env for env, field_name in env_names(settings).items() if settings.model_fields[field_name].is_required()
    }
    missing = required - set(environment_of(services()[name]))
    assert not missing, f"{name} does not set {sorted(missing)}"


@pytest.mark.parametrize("which", ENVIRONMENTS)
@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_service_environment_is_valid_settings(name: str, which: str) -> None:
    environment = environment_of(services(user_environment(which))[name])
    from_values_only(SETTINGS[APP_SERVICES[name]], environment)


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_compose_defaults_match_the_code_defaults(name: str) -> None:
    """`NAME: ${NAME:-x}` must not quietly change a default: x is what the settings class would use anyway."""
    settings = SETTINGS[APP_SERVICES[name]]
    fields = env_names(settings)
    raw = environment_of(raw_compose()["services"][name])
    for variable, value in raw.items():
        match = re.fullmatch(r"\$\{(?P<name>\w+):?-(?P<default>[^}]*)\}", value)
        if match is None or match["name"] != variable:
            continue
        field_name = fields[variable]
        values = {**secrets_for(settings), variable: match["default"]}
        built = getattr(from_values_only(settings, values), field_name)
        default = settings.model_fields[field_name].get_default(call_default_factory=True)
        assert built == default, f"{name}: {variable} defaults to {match['default']!r}, the code to {default!r}"


def test_compose_resolves_with_only_the_required_secrets() -> None:
    """`docker compose up` needs nothing but the secrets (README): every other interpolation has a default."""
    compose(REQUIRED_SECRETS)


def test_compose_refuses_to_start_without_the_stream_token_secret() -> None:
    with pytest.raises(InterpolationError, match="STREAM_TOKEN_SECRET"):
        compose({})


def test_compose_interpolates_only_variables_with_one_meaning() -> None:
    """A `.env` serves `make run` and compose alike, so each variable compose takes from it is one a settings
    class reads (same name, same meaning) or one of the few that configure an image."""
    unknown = interpolated_names(raw_compose()) - read_by_some_settings() - COMPOSE_ONLY_VARIABLES
    assert not unknown, f"compose interpolates {sorted(unknown)}, which no settings class reads"


@pytest.mark.parametrize("which", ENVIRONMENTS)
def test_addresses_point_at_compose_services(which: str) -> None:
    found = services(user_environment(which))
    for name in APP_SERVICES.keys() | {"migrate"}:
        environment = environment_of(found[name])
        for variable, host in ADDRESSES.items():
            if variable in environment:
                assert urlsplit(environment[variable]).hostname == host, f"{name}: {variable} is not on {host}"
                assert host in found


@pytest.mark.parametrize("which", ENVIRONMENTS)
def test_database_url_matches_the_postgres_service(which: str) -> None:
    found = services(user_environment(which))
    postgres = environment_of(found["postgres"])
    for name in APP_SERVICES.keys() | {"migrate"}:
        url = environment_of(found[name]).get("DATABASE_URL")
        if url is None:
            continue
        parts = urlsplit(url)
        assert parts.path.lstrip("/") == postgres["POSTGRES_DB"] == "processing_db", name
        assert parts.username == postgres.get("POSTGRES_USER", "postgres"), name
        assert parts.password == postgres["POSTGRES_PASSWORD"], name
        assert parts.port in (None, 5432), name


def test_every_service_that_reads_the_database_is_given_its_url() -> None:
    for name, module in APP_SERVICES.items():
        reads = "DATABASE_URL" in env_names(SETTINGS[module])
        assert reads == ("DATABASE_URL" in environment_of(services()[name])), name


def test_gateway_proxies_streams_to_the_progress_service() -> None:
    found = services()
    url = urlsplit(environment_of(found["gateway"])["PROGRESS_URL"])
    assert url.hostname == "progress"
    assert url.port == int(environment_of(found["progress"])["PORT"])


def test_executors_write_to_the_bucket_s3_init_creates() -> None:
    found = services()
    created = environment_of(found["s3-init"])
    for name, module in APP_SERVICES.items():
        if module == "executor":
            environment = environment_of(found[name])
            assert environment["S3_BUCKET"] == created["S3_BUCKET"], name
            assert environment["S3_ENDPOINT_URL"] == created["S3_ENDPOINT_URL"], name


def test_instance_ids_are_distinct() -> None:
    found = services()
    ids = {name: environment_of(found[name]).get("INSTANCE_ID") for name in APP_SERVICES}
    executors = [name for name, module in APP_SERVICES.items() if module == "executor"]
    assert all(ids[name] for name in executors), f"every executor needs its own INSTANCE_ID: {ids}"
    given = [value for value in ids.values() if value]
    assert len(given) == len(set(given)), f"INSTANCE_ID repeats: {ids}"


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_service_listens_on_all_interfaces(name: str) -> None:
    assert environment_of(services()[name]).get("HOST") == "0.0.0.0"  # noqa: S104 - inside its container


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_service_logs_json(name: str) -> None:
    assert environment_of(services()[name]).get("LOG_FORMAT") == "json"


def published_ports(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(host port, container port) for each published port."""
    ports: list[tuple[str, str]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.append((str(entry.get("published", "")), str(entry["target"])))
        else:
            parts = str(entry).split("/")[0].split(":")
            ports.append((parts[-2] if len(parts) > 1 else "", parts[-1]))
    return ports


def test_only_the_proxy_is_published_on_the_api_port() -> None:
    found = services()
    for name, service in found.items():
        if name != PROXY:
            assert not published_ports(service), f"{name} publishes a port; the proxy is the public address"
    assert (str(PUBLIC_PORT), str(nginx_listen_port())) in published_ports(found[PROXY])


def test_long_running_services_have_a_healthcheck() -> None:
    for name, service in services().items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck") or {}
        test = check.get("test")
        assert test, f"{name} has no healthcheck"
        assert test not in (["NONE"], "NONE"), f"{name} disables its healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_healthcheck_asks_the_service_health_endpoint(name: str) -> None:
    service = services()[name]
    test = service["healthcheck"]["test"]
    text = test if isinstance(test, str) else " ".join(test)
    port = environment_of(service).get("PORT")
    assert port, f"{name} must set PORT: its healthcheck and the proxy depend on it"
    assert "/health" in text, name
    assert f":{port}/" in text or "os.environ['PORT']" in text, f"{name}: the healthcheck is not on port {port}"


def test_one_shot_services_run_once() -> None:
    for name in ONE_SHOT:
        assert str(services()[name].get("restart", "no")) in ("no", "on-failure"), name


def test_migrate_runs_alembic_on_the_image() -> None:
    migrate = services()["migrate"]
    assert command_of(migrate) == ["alembic", "upgrade", "head"]
    assert (ROOT / "alembic.ini").is_file()
    unknown = set(environment_of(migrate)) - set(env_names(DatabaseSettings))
    assert not unknown, f"migrate sets {sorted(unknown)}, which migrations/env.py never reads"


def dependencies(service: Mapping[str, Any]) -> dict[str, str]:
    depends_on = service.get("depends_on") or {}
    assert isinstance(depends_on, dict), "depends_on must name a condition for each dependency"
    return {target: str(options.get("condition")) for target, options in depends_on.items()}


def test_dependencies_wait_for_health_or_completion() -> None:
    found = services()
    for name, service in found.items():
        for target, condition in dependencies(service).items():
            assert target in found, f"{name} depends on unknown {target}"
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert condition == expected, f"{name} -> {target}: {condition}, expected {expected}"


def test_dependencies_follow_what_each_service_reads() -> None:
    found = services()
    for name, module in APP_SERVICES.items():
        reads = env_names(SETTINGS[module])
        needed = {"redis"}
        if "DATABASE_URL" in reads:
            needed |= {"postgres", "migrate"}
        if "S3_BUCKET" in reads:
            needed.add("s3-init")
        missing = needed - set(dependencies(found[name]))
        assert not missing, f"{name} starts before {sorted(missing)}"
    assert "postgres" in dependencies(found["migrate"])
    assert "localstack" in dependencies(found["s3-init"])
    upstreams = {urlsplit(url).hostname for url in nginx_upstreams()}
    assert upstreams <= set(dependencies(found[PROXY])), "the proxy must wait for every upstream it routes to"


def test_dependencies_have_no_cycle() -> None:
    found = services()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for target in dependencies(found[name]):
            visit(target, (*path, name))
        done.add(name)

    for name in found:
        visit(name, ())


def test_named_volumes_are_declared_and_bind_mounts_exist() -> None:
    document = compose()
    declared = set(document.get("volumes") or {})
    for name, service in document["services"].items():
        for volume in service.get("volumes") or []:
            source = str(volume["source"] if isinstance(volume, dict) else volume.split(":")[0])
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"


# --- the image ------------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile_stages() -> list[Stage]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = re.sub(r"\\\n", " ", text).splitlines()
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif instruction == "FROM":
            base = rest.split()[0] if not rest.startswith("--") else rest.split()[1]
            stages.append(Stage(re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], ""), base)))
        else:
            assert stages, f"{instruction} before FROM"
            stages[-1].instructions.append((instruction, rest.strip()))
    return stages


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def dockerignored(path: str) -> bool:
    ignored = False
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        forms = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(candidate, form) for candidate in candidates for form in forms):
            ignored = not negated
    return ignored


def test_app_services_build_the_one_image() -> None:
    found = services()
    images = set()
    for name in APP_SERVICES.keys() | {"migrate"}:
        build = found[name].get("build")
        assert build is not None, f"{name} does not build the project's image"
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert context.resolve() == ROOT, f"{name}: build context is not the repository root"
        assert (context / dockerfile).resolve() == DOCKERFILE, f"{name}: builds {dockerfile}"
        images.add(found[name].get("image"))
    assert len(images) == 1, f"the app services tag different images: {images}"


def test_dockerfile_installs_the_locked_environment_with_the_makefile_uv() -> None:
    uv_version = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE)
    assert uv_version is not None
    runs = [rest for stage in dockerfile_stages() for instruction, rest in stage.instructions if instruction == "RUN"]
    assert any(re.search(rf"pip install \S*uv=={re.escape(uv_version[1])}\b", run) for run in runs)
    syncs = [run for run in runs if "uv sync" in run]
    assert syncs, "the image never runs uv sync"
    for run in syncs:
        assert "--frozen" in run.split(), f"not from uv.lock: {run}"
        assert "--no-dev" in run.split(), f"installs the dev group: {run}"


def test_dockerfile_python_satisfies_the_project() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    for stage in dockerfile_stages():
        match = re.fullmatch(r"python:(\d+\.\d+)[\w.-]*", stage.base)
        assert match is not None, f"unexpected base image {stage.base}"
        assert SpecifierSet(requires).contains(match[1]), f"{stage.base} does not satisfy {requires}"


def test_dockerfile_runtime_stage_has_the_code_and_a_non_root_user() -> None:
    final = dockerfile_stages()[-1]
    copied: set[str] = set()
    for instruction, rest in final.instructions:
        if instruction == "COPY" and "--from" not in rest:
            copied |= {source.rstrip("/") for source in rest.split()[:-1] if not source.startswith("--")}
    for needed in ("libs", "services", "migrations", "alembic.ini", "deploy"):
        assert needed in copied, f"the image lacks {needed}"
    users = [rest for instruction, rest in final.instructions if instruction == "USER"]
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in ("root", "0"), "the image runs as root"


def test_dockerfile_sources_exist_and_are_not_dockerignored() -> None:
    for stage in dockerfile_stages():
        for instruction, rest in stage.instructions:
            if instruction not in ("COPY", "ADD") or "--from" in rest:
                continue
            for source in (part for part in rest.split()[:-1] if not part.startswith("--")):
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
                assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_secrets_and_the_host_venv_out() -> None:
    for path in (".env", ".venv", ".git", "libs/common/__pycache__"):
        assert dockerignored(path), f"{path} would be sent to the build"


# --- the proxy ------------------------------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list["Directive"] | None = None

    def children(self, name: str) -> list["Directive"]:
        return [child for child in self.block or [] if child.name == name]


def nginx_tokens(text: str) -> Iterator[tuple[str, bool]]:
    """(token, is_punctuation): words, quoted strings and the characters `{`, `}`, `;`."""
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char == "#":
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif char in "{};":
            yield char, True
            i += 1
        elif char in "'\"":
            end = i + 1
            while text[end] != char:
                end += 2 if text[end] == "\\" else 1
            yield text[i + 1 : end], False
            i = end + 1
        else:
            end = i
            while end < len(text) and not text[end].isspace() and text[end] not in "{};":
                end += 1
            yield text[i:end], False
            i = end


def parse_nginx(text: str) -> Directive:
    stack = [Directive("main", [], [])]
    words: list[str] = []
    for token, punctuation in nginx_tokens(text):
        if not punctuation:
            words.append(token)
        elif token == "}":
            assert not words, f"directive {words} lacks its `;`"
            assert len(stack) > 1, "unbalanced `}` in nginx.conf"
            stack.pop()
        else:
            assert words, f"empty directive before {token!r}"
            directive = Directive(words[0], words[1:], [] if token == "{" else None)
            assert stack[-1].block is not None
            stack[-1].block.append(directive)
            if token == "{":
                stack.append(directive)
            words = []
    assert len(stack) == 1, "unterminated block in nginx.conf"
    assert not words, "unterminated directive in nginx.conf"
    return stack[0]


@functools.cache
def nginx_server() -> tuple[Directive, Directive]:
    """(http, the server that listens on the public port)."""
    conf = parse_nginx(NGINX_CONF.read_text(encoding="utf-8"))
    (http,) = conf.children("http")
    servers = [
        server
        for server in http.children("server")
        if any(listen.args[0].split(":")[-1] == str(PUBLIC_PORT) for listen in server.children("listen"))
    ]
    assert len(servers) == 1, f"nginx.conf needs one server listening on {PUBLIC_PORT}"
    return http, servers[0]


def nginx_listen_port() -> int:
    _, server = nginx_server()
    return int(server.children("listen")[0].args[0].split(":")[-1])


def select_location(server: Directive, uri: str) -> Directive:
    """nginx's choice: an exact match; else the longest prefix if `^~`; else the first matching regex; else
    the longest prefix."""
    best: Directive | None = None
    for location in server.children("location"):
        modifier, pattern = location.args if len(location.args) == 2 else ("", location.args[0])
        if modifier == "=" and uri == pattern:
            return location
        if modifier in ("", "^~") and uri.startswith(pattern) and (best is None or len(pattern) > len(best.args[-1])):
            best = location
    if best is not None and best.args[0] == "^~":
        return best
    for location in server.children("location"):
        if location.args[0] in ("~", "~*"):
            flags = re.IGNORECASE if location.args[0] == "~*" else 0
            if re.search(location.args[1], uri, flags):
                return location
    assert best is not None, f"no location serves {uri}"
    return best


def effective(levels: list[Directive], name: str) -> list[Directive]:
    """The directives `name` in force at the innermost level: nginx inherits them only where a level sets
    none of its own."""
    for level in reversed(levels):
        if found := level.children(name):
            return found
    return []


def nginx_route(uri: str) -> tuple[str, list[Directive]]:
    """(upstream URL, [http, server, location]) for a request path."""
    http, server = nginx_server()
    location = select_location(server, uri)
    levels = [http, server, location]
    proxy_passes = location.children("proxy_pass")
    assert len(proxy_passes) == 1, f"{uri} is not proxied (location {' '.join(location.args)})"
    (proxy_pass,) = proxy_passes
    variables = {d.args[0]: d.args[1] for level in (server, location) for d in level.children("set")}
    upstream = re.sub(r"\$\w+", lambda m: variables.get(m[0], m[0]), proxy_pass.args[0])
    return upstream, levels


def nginx_upstreams() -> set[str]:
    return {nginx_route(uri)[0] for uri in (STREAM_PATH, *GATEWAY_PATHS)}


def nginx_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value)
    assert match is not None, f"unreadable nginx time {value!r}"
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2] or "s"]


def single(levels: list[Directive], name: str, default: str) -> str:
    found = effective(levels, name)
    return found[-1].args[0] if found else default


def service_url(name: str) -> str:
    return f"http://{name}:{environment_of(services()[name])['PORT']}"


def test_nginx_routes_the_stream_to_progress() -> None:
    upstream, _ = nginx_route(STREAM_PATH)
    assert upstream.rstrip("/") == service_url("progress")


@pytest.mark.parametrize("path", GATEWAY_PATHS)
def test_nginx_routes_everything_else_to_the_gateway(path: str) -> None:
    upstream, _ = nginx_route(path)
    assert upstream.rstrip("/") == service_url("gateway")


def test_nginx_streams_unbuffered_over_http_1_1() -> None:
    _, levels = nginx_route(STREAM_PATH)
    assert single(levels, "proxy_buffering", "on") == "off"
    assert single(levels, "proxy_http_version", "1.0") == "1.1"


def test_nginx_waits_longer_than_the_sse_ping() -> None:
    _, levels = nginx_route(STREAM_PATH)
    progress = environment_of(services()["progress"])
    ping = int(progress.get("SSE_PING_SECONDS", ProgressSettings.model_fields["sse_ping_seconds"].default))
    assert nginx_seconds(single(levels, "proxy_read_timeout", "60s")) > ping


def test_nginx_passes_last_event_id() -> None:
    _, levels = nginx_route(STREAM_PATH)
    assert single(levels, "proxy_pass_request_headers", "on") == "on"
    headers = {d.args[0].lower(): d.args[1] for d in effective(levels, "proxy_set_header")}
    assert headers.get("last-event-id", "$http_last_event_id") == "$http_last_event_id"


# --- .env.example ---------------------------------------------------------------------------------------


def test_env_example_names_only_variables_the_code_reads() -> None:
    active, commented = env_example()
    unknown = (set(active) | commented) - read_by_some_settings()
    assert not unknown, f".env.example names {sorted(unknown)}, which no settings class reads"


def test_env_example_covers_the_documented_configuration() -> None:
    active, commented = env_example()
    missing = SPEC_VARIABLES - set(active) - commented
    assert not missing, f".env.example lacks {sorted(missing)}"


@pytest.mark.parametrize("module", sorted(SETTINGS))
def test_env_example_values_are_valid(module: str) -> None:
    active, _ = env_example()
    fields = env_names(SETTINGS[module])
    values = {name: value for name, value in active.items() if name in fields}
    from_values_only(SETTINGS[module], {**secrets_for(SETTINGS[module]), **values})
