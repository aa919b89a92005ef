"""The docker compose deployment, checked without Docker (no engine on the test machines).

docker-compose.yml must validate against the Compose Specification's JSON schema (vendored in
tests/schemas/), every ${VARIABLE} it uses must be in .env.example, every environment variable the
backend reads must be documented (README) and wired (compose), no secret may be written in the
files. The image's own properties: tests/test_dockerfile.py.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
SCHEMA = REPO / "tests" / "schemas" / "compose-spec.json"

#: ${NAME}, ${NAME:-default}, ${NAME:?error}, $NAME (not $$NAME, a literal dollar)
_INTERPOLATION = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")
#: names that are credentials: their values may only come from .env
_SECRET = re.compile(r"(PASSWORD|_PASS|USER_TOKEN|API_KEY|SECRET|SECRET_KEY)$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_text_without_comments() -> str:
    return "\n".join(line.split(" #")[0] for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))


def _env_example() -> dict[str, str]:
    """Variables .env.example defines (uncommented ``NAME=value`` lines)."""
    names = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if match:
            names[match[1]] = match[2]
    return names


def _env_example_mentions() -> set[str]:
    """Every ``NAME=`` in .env.example, commented out or not (optional settings are commented)."""
    return set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))


def _backend_reads() -> set[str]:
    """Environment variables the backend reads, collected from its sources."""
    patterns = [
        r"""\benv\.get\(\s*["']([A-Z_][A-Z0-9_]*)["']""",
        r"""\benv\[\s*["']([A-Z_][A-Z0-9_]*)["']\s*\]""",
        # helpers that take the environment and a name: _number(env, "X", ...), _flag(env, "X", ...)
        r"""\w\(\s*env\s*,\s*["']([A-Z_][A-Z0-9_]*)["']""",
        r"""os\.environ\.get\(\s*["']([A-Z_][A-Z0-9_]*)["']""",
        r"""os\.environ\[\s*["']([A-Z_][A-Z0-9_]*)["']\s*\]""",
        r"""os\.getenv\(\s*["']([A-Z_][A-Z0-9_]*)["']""",
    ]
    names = set()
    for path in sorted((REPO / "backend").glob("*.py")):
        text = path.read_text()
        for pattern in patterns:
            names.update(re.findall(pattern, text))
    return names


def _readme_backend_table() -> set[str]:
    """Variable names in the README's backend table (the `| variable | default | meaning |` one)."""
    text = (REPO / "README.md").read_text()
    start = text.index("| variable | default | meaning |")
    names = set()
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        names.update(re.findall(r"`([A-Z_][A-Z0-9_]*)`", line.split("|")[1]))
    return names


def _label_studio_pin() -> str:
    for path in (REPO / "labeler" / "studio.py", REPO / "tests" / "labelstudio.py"):
        if path.exists():
            match = re.search(r'^LABEL_STUDIO_VERSION\s*=\s*"([^"]+)"', path.read_text(), re.M)
            if match:
                return match[1]
    pytest.fail("no LABEL_STUDIO_VERSION pin found in labeler/studio.py or tests/labelstudio.py")


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            instruction, _, args = current.strip().partition(" ")
            lines.append((instruction.upper(), " ".join(args.split())))
        current = ""
    return lines


# --- the compose file ------------------------------------------------------------------------


def test_vendored_schema_is_the_compose_specification():
    schema = json.loads(SCHEMA.read_text())
    assert schema["$id"] == "compose_spec.json"
    assert schema["title"] == "Compose Specification"
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    note = (REPO / "tests" / "schemas" / "README.md").read_text()
    assert "compose-spec/compose-spec" in note and "Apache-2.0" in note


def test_compose_file_validates_against_the_compose_specification(compose):
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_schema_check_catches_mistakes(compose):
    """The validation is not vacuous: a misspelt key and a wrong type are refused."""
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["backend"]["healthchek"] = broken["services"]["backend"].pop("healthcheck")
    assert not validator.is_valid(broken)
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["backend"]["deploy"]["resources"]["reservations"]["devices"] = {"driver": "nvidia"}
    assert not validator.is_valid(broken)


def test_services_share_one_network_and_named_volumes(compose):
    services = compose["services"]
    assert {"label-studio", "backend"} <= set(services)
    assert list(compose["networks"]) == ["labeling"]
    for name, service in services.items():
        assert service.get("networks") == ["labeling"], name
    named = set(compose["volumes"])
    assert "label-studio-data:/label-studio/data" in services["label-studio"]["volumes"]
    backend_volumes = services["backend"]["volumes"]
    assert "labeler-db:/data" in backend_volumes
    assert any(v.endswith(":/models:ro") for v in backend_volumes), "models are mounted read-only"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("$", ".", "/")):
                assert source in named, f"{name}: volume {source} is not declared"


def test_label_studio_image_is_the_tested_version(compose):
    assert compose["services"]["label-studio"]["image"] == f"heartexlabs/label-studio:{_label_studio_pin()}"
    for name, service in compose["services"].items():
        if "image" in service and "build" not in service:
            assert re.search(r":[0-9][\w.-]*$", service["image"]), f"{name}: image tag must be a pinned version"


def test_label_studio_can_reach_the_backend_and_stays_offline(compose):
    env = compose["services"]["label-studio"]["environment"]
    assert env["ML_BLOCK_LOCAL_IP"] == "false" and env["SSRF_PROTECTION_ENABLED"] == "false"
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert env["LOCAL_FILES_DOCUMENT_ROOT"] == compose["services"]["backend"]["environment"]["LOCAL_FILES_DOCUMENT_ROOT"]
    for name in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        assert env[name].startswith("${" + name), name
    assert env["SENTRY_DSN"] == "" and env["FRONTEND_SENTRY_DSN"] == ""
    assert env["LATEST_VERSION_CHECK"] == "false" and env["COLLECT_ANALYTICS"] == "false"


def test_backend_talks_to_label_studio_on_the_compose_network(compose):
    env = compose["services"]["backend"]["environment"]
    assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert env["LABEL_STUDIO_API_KEY"].startswith("${LABEL_STUDIO_USER_TOKEN")
    assert env["BACKEND_HOST"] == "0.0.0.0"
    assert env["MODEL_PATH"].startswith("/models/")
    assert env["DATABASE_URL"].endswith("sqlite:////data/labeler.db}")
    assert compose["services"]["backend"]["depends_on"]["label-studio"]["condition"] == "service_healthy"


def test_gpu_is_reserved_for_the_backend_only(compose):
    devices = compose["services"]["backend"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name, service in compose["services"].items():
        if name != "backend":
            assert "deploy" not in service and "gpus" not in service, name


def test_health_checks_on_both_services(compose):
    for name, port in (("label-studio", 8080), ("backend", 9090)):
        check = compose["services"][name]["healthcheck"]
        assert check["test"][0] == "CMD"
        assert f"127.0.0.1:{port}/health" in " ".join(check["test"]), name
        assert check["start_period"] and check["retries"], name
    instructions = _dockerfile_instructions()
    healthcheck = [args for instruction, args in instructions if instruction == "HEALTHCHECK"]
    assert len(healthcheck) == 1 and "/health" in healthcheck[0]


# --- environment and secrets -----------------------------------------------------------------


def test_every_interpolated_variable_is_in_env_example():
    used = {a or b for a, b in _INTERPOLATION.findall(_compose_text_without_comments())}
    assert used, "the compose file interpolates nothing?"
    missing = used - set(_env_example())
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_env_example_holds_no_secret():
    for name, value in _env_example().items():
        if _SECRET.search(name):
            assert value == "", f".env.example must leave {name} empty (compose refuses to start without it)"


def test_compose_writes_no_secret(compose):
    for service_name, service in compose["services"].items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"{service_name}: use the mapping form for environment"
        for name, value in env.items():
            if _SECRET.search(name) and value not in (None, ""):
                assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}", str(value)), (
                    f"{service_name}: {name} must be a ${{...}} reference to .env, not a literal"
                )
                assert not re.search(r":-[^}]", str(value)), f"{service_name}: {name} must not have a default"


def test_secrets_and_local_state_stay_out_of_the_image():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".env", ".git", ".venv", ".cache"} <= set(ignored)


def test_every_backend_variable_is_documented_and_wired(compose):
    reads = _backend_reads()
    # the backend's own settings, at least (guards the collection itself against regressions)
    assert {"MODEL_PATH", "DATABASE_URL", "LABEL_STUDIO_URL", "BACKEND_WORKERS"} <= reads
    undocumented = reads - _readme_backend_table()
    assert not undocumented, f"document in README's backend table: {sorted(undocumented)}"
    backend_env = compose["services"]["backend"]["environment"]
    unwired = reads - set(backend_env)
    assert not unwired, f"set (or pass through with a null value) in docker-compose.yml: {sorted(unwired)}"
    # a pass-through (null) variable must be listed, commented or not, in .env.example
    passthrough = {name for name, value in backend_env.items() if value is None}
    assert not passthrough - _env_example_mentions(), sorted(passthrough - _env_example_mentions())
    assert not set(backend_env) - reads, f"the backend does not read {sorted(set(backend_env) - reads)}"


# --- the image -------------------------------------------------------------------------------


def test_image_runs_the_backend_as_a_non_root_user():
    instructions = _dockerfile_instructions()
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("EXPOSE", "9090") in instructions
    assert ("CMD", '["labeler-backend"]') in instructions
    env = " ".join(args for instruction, args in instructions if instruction == "ENV")
    assert "BACKEND_HOST=0.0.0.0" in env
