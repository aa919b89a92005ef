"""The docker compose deployment and the Makefile, checked by what they do, without Docker.

docker-compose.yml must validate against the Compose Specification's JSON schema (vendored in
tests/schemas/; no Docker engine on the test machines), its backend environment, interpolated
from .env.example the way compose does it, must be settings the backend accepts and must point
at the volumes, ports and service it relies on; Label Studio must run with the settings the test
server (labeler/studio.py) is tested with; every variable the backend reads must be documented
(README), wired (compose) and listed (.env.example); no secret may be written in the files; and
`make -n` must show each target doing what the README says. The Dockerfile is not checked here.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
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


def _env_example_optional() -> dict[str, str]:
    """The commented-out examples (``# NAME=value``) of .env.example: the optional settings."""
    return dict(re.findall(r"^#\s*([A-Z_][A-Z0-9_]*)=(\S*)", ENV_EXAMPLE.read_text(), re.M))


def _interpolate(value: str, dotenv: dict[str, str]) -> str:
    """Compose's interpolation of one value: ${X}, ${X:-default}, ${X-default}, ${X:?err}, $X."""

    def one(match: re.Match) -> str:
        name, colon, op, arg = match["name"] or match["bare"], match["colon"], match["op"], match["arg"] or ""
        value = dotenv.get(name)
        missing = value is None or (colon and value == "")
        if op == "-":
            return arg if missing else value
        if op == "?":
            if missing:
                raise ValueError(f"compose refuses to start: {name}: {arg}")
            return value
        return value or ""

    pattern = r"(?<!\$)\$(?:\{(?P<name>\w+)(?:(?P<colon>:?)(?P<op>[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
    return re.sub(pattern, one, value)


def _service_env(service: dict, dotenv: dict[str, str]) -> dict[str, str]:
    """The container environment compose gives ``service`` with ``dotenv`` as its .env file: values
    interpolated; a null (pass-through) variable is taken from .env when set there, absent otherwise."""
    env = {}
    for name, value in (service.get("environment") or {}).items():
        if value is None:
            if name in dotenv:
                env[name] = dotenv[name]
        else:
            env[name] = _interpolate(str(value), dotenv)
    return env


def _dotenv_filled() -> dict[str, str]:
    """.env.example as an operator would fill it: the secrets it leaves empty given values."""
    dotenv = _env_example()
    for name, value in dotenv.items():
        if _SECRET.search(name) and not value:
            dotenv[name] = "0123456789abcdef0123456789abcdef01234567"
    return dotenv


def _mounts(service: dict, dotenv: dict[str, str]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume, sources interpolated."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *mode = _interpolate(volume, dotenv).split(":")
        mounts.append((source, target, mode[0] if mode else "rw"))
    return mounts


def _mount_of(path: str, mounts: list[tuple[str, str, str]]) -> tuple[str, str, str] | None:
    """The mount whose target holds ``path`` (absolute, in the container), or None."""
    for mount in mounts:
        if path == mount[1] or path.startswith(mount[1].rstrip("/") + "/"):
            return mount
    return None


class _Recording(dict):
    """A mapping that remembers every key looked up (``[k]``, ``get``, ``in``)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def _backend_reads() -> set[str]:
    """Environment variables the backend reads: what Settings.from_env looks up (recorded), plus
    the names backend/*.py reads from os.environ or an ``env`` mapping (gunicorn's bind, workers,
    the metrics folder in backend/server.py)."""
    from backend.config import Settings

    recording = _Recording({"MODEL_PATH": "m.keras"})
    Settings.from_env(recording)
    patterns = [
        r"""\benv\.get\(\s*["']([A-Z_][A-Z0-9_]*)["']""",
        r"""\benv\[\s*["']([A-Z_][A-Z0-9_]*)["']\s*\]""",
        r"""\w\(\s*env\s*,\s*["']([A-Z_][A-Z0-9_]*)["']""",
        r"""os\.environ\.get\(\s*["']([A-Z_][A-Z0-9_]*)["']""",
        r"""os\.environ\[\s*["']([A-Z_][A-Z0-9_]*)["']\s*\]""",
        r"""os\.getenv\(\s*["']([A-Z_][A-Z0-9_]*)["']""",
    ]
    names = set(recording.read)
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


# --- the compose file: schema and structure --------------------------------------------------


def test_compose_file_validates_against_the_compose_specification(compose):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
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


def test_services_share_a_network_and_use_only_declared_volumes(compose):
    declared_networks, declared_volumes = set(compose["networks"]), set(compose["volumes"])
    shared = set.intersection(*(set(service.get("networks", [])) for service in compose["services"].values()))
    assert shared and shared <= declared_networks, "every service must be on one common declared network"
    for name, service in compose["services"].items():
        for source, _, _ in _mounts(service, _dotenv_filled()):
            if not source.startswith((".", "/")):
                assert source in declared_volumes, f"{name}: volume {source} is not declared"


def test_every_label_studio_this_project_starts_imports_predictions_at_a_constant_cost(compose, tmp_path):
    """The feature flag of Label Studio's constant-cost bulk import (labeler.posting) is on in the
    compose file's Label Studio and in the one the tests, the demo and the benchmarks start."""
    from labeler.posting import FAST_IMPORT_FLAG
    from labeler.studio import server_env

    assert str(compose["services"]["label-studio"]["environment"][FAST_IMPORT_FLAG]).lower() == "true"
    env = server_env(data_dir=tmp_path, home=tmp_path, document_root=tmp_path, username="u", password="p",
                     token="t", secret_key="s", host_url=None)
    assert env[FAST_IMPORT_FLAG] == "true"


def test_images_are_pinned_and_label_studio_is_the_tested_version(compose):
    from labeler.studio import LABEL_STUDIO_VERSION

    image = compose["services"]["label-studio"]["image"]
    assert image.rsplit(":", 1)[1] == LABEL_STUDIO_VERSION, f"{image}: the tests run Label Studio {LABEL_STUDIO_VERSION}"
    for name, service in compose["services"].items():
        if "image" in service and "build" not in service:
            assert re.search(r":[0-9][\w.-]*$", service["image"]), f"{name}: image tag must be a pinned version"


def test_label_studio_runs_with_the_settings_it_is_tested_with(compose, tmp_path):
    """Every setting both the compose file and the test server (labeler.studio.server_env) give
    Label Studio has the same value in both (paths and credentials are per installation)."""
    from labeler.studio import server_env

    tested = server_env(data_dir=tmp_path, home=tmp_path, document_root=tmp_path, username="u", password="p",
                        token="t", secret_key="s", host_url=None, offline=False)
    deployed = _service_env(compose["services"]["label-studio"], _dotenv_filled())
    per_installation = {"LOCAL_FILES_DOCUMENT_ROOT"} | {n for n in deployed if _SECRET.search(n) or n.endswith("USERNAME")}
    common = (set(tested) & set(deployed)) - per_installation
    assert len(common) >= 6, f"compose and labeler/studio.py share too few settings to compare: {sorted(common)}"
    differ = {name: (deployed[name], tested[name]) for name in common if deployed[name] != tested[name]}
    assert not differ, f"compose vs tested (deployed, tested): {differ}"


def test_gpu_is_reserved_for_the_backend_only(compose):
    devices = compose["services"]["backend"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", []) for device in devices)
    for name, service in compose["services"].items():
        if name != "backend":
            assert "deploy" not in service and "gpus" not in service, name


# --- the backend's environment, resolved as compose resolves it --------------------------------


def test_backend_environment_is_valid_settings_wired_to_its_volumes_and_label_studio(compose):
    from backend.config import Settings

    dotenv = _dotenv_filled()
    backend, studio = compose["services"]["backend"], compose["services"]["label-studio"]
    env = _service_env(backend, dotenv)
    settings = Settings.from_env(env)  # raises ValueError naming a value the backend refuses
    mounts, studio_mounts = _mounts(backend, dotenv), _mounts(studio, dotenv)

    database = urlsplit(settings.database_url)
    assert database.scheme == "sqlite", "the default database is SQLite"
    db_mount = _mount_of(database.path[1:], mounts)  # sqlite:////data/x.db -> /data/x.db
    assert db_mount and db_mount[0] in compose["volumes"] and db_mount[2] == "rw", "the database must live in a named, writable volume"
    model_mount = _mount_of(str(settings.model_path), mounts)
    assert model_mount and model_mount[2] == "ro", "the model must come from a read-only mount"
    root = str(settings.local_files_document_root)
    backend_root, studio_root = _mount_of(root, mounts), _mount_of(root, studio_mounts)
    assert backend_root and studio_root and backend_root[:2] == studio_root[:2], (
        "the backend must read Label Studio's local files from the same folder at the same path"
    )

    url = urlsplit(settings.label_studio_url)
    studio_ports = {str(p).rsplit(":", 1)[-1] for p in studio.get("ports", [])}
    assert url.hostname == "label-studio" and str(url.port) in studio_ports, settings.label_studio_url
    assert set(backend["networks"]) & set(studio["networks"])
    assert backend["depends_on"]["label-studio"]["condition"] == "service_healthy"
    # the backend's API key is Label Studio's admin token: one .env variable feeds both
    key_var = _INTERPOLATION.findall(backend["environment"]["LABEL_STUDIO_API_KEY"])
    token_var = _INTERPOLATION.findall(studio["environment"]["LABEL_STUDIO_USER_TOKEN"])
    assert key_var == token_var and settings.label_studio_api_key == dotenv["LABEL_STUDIO_USER_TOKEN"]

    assert env.get("BACKEND_HOST") not in (None, "127.0.0.1", "localhost"), "loopback is unreachable from Label Studio"
    port = env.get("BACKEND_PORT", "9090")  # backend/server.py's default
    assert port in {str(p) for p in backend.get("expose", [])}
    assert f"127.0.0.1:{port}/health" in " ".join(backend["healthcheck"]["test"])


def test_a_missing_secret_stops_compose_with_its_name(compose):
    dotenv = _env_example()  # as committed: the secrets are empty
    with pytest.raises(ValueError, match="LABEL_STUDIO_USER_TOKEN"):
        _service_env(compose["services"]["backend"], dotenv)


def test_env_example_optional_settings_are_accepted_by_the_backend(compose):
    """Uncommenting every optional example of .env.example gives settings the backend accepts."""
    from backend.config import Settings

    optional = _env_example_optional()
    assert {"CAM_METHOD", "BATCH_SIZE", "PRELABEL_SOURCE"} <= set(optional), "the optional examples were not found"
    settings = Settings.from_env(_service_env(compose["services"]["backend"], {**_dotenv_filled(), **optional}))
    assert settings.batch_size == int(optional["BATCH_SIZE"]) and settings.cam_method == optional["CAM_METHOD"]


def test_the_health_check_path_answers_from_the_app(compose, tmp_path):
    """The path both health checks of the backend ask for is a route of the real app (200 while
    the model is not loaded yet)."""
    from backend.app import create_app
    from backend.config import Settings

    check = " ".join(compose["services"]["backend"]["healthcheck"]["test"])
    path = urlsplit(re.search(r"http://[^'\"\s]+", check)[0]).path
    settings = Settings.from_env({"MODEL_PATH": str(tmp_path / "absent.keras"), "WARMUP": "0",
                                  "DATABASE_URL": f"sqlite:///{tmp_path / 'labeler.db'}"})
    answer = create_app(settings).test_client().get(path)
    assert answer.status_code == 200 and answer.json["status"] == "UP"


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
    assert {"MODEL_PATH", "DATABASE_URL", "LABEL_STUDIO_URL", "BACKEND_WORKERS", "MIXED_PRECISION"} <= reads
    undocumented = reads - _readme_backend_table()
    assert not undocumented, f"document in README's backend table: {sorted(undocumented)}"
    backend_env = compose["services"]["backend"]["environment"]
    unwired = reads - set(backend_env)
    assert not unwired, f"set (or pass through with a null value) in docker-compose.yml: {sorted(unwired)}"
    listed = set(_env_example()) | set(_env_example_optional())
    passthrough = {name for name, value in backend_env.items() if value is None}
    assert not passthrough - listed, f"list in .env.example (commented out is fine): {sorted(passthrough - listed)}"
    assert not set(backend_env) - reads, f"the backend does not read {sorted(set(backend_env) - reads)}"


# --- the Makefile, by dry run ------------------------------------------------------------------


def _make_n(target: str) -> list[list[str]]:
    """The commands ``make -n -B TARGET`` would run (prerequisites included), split like a shell."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under `make test` too
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", target], cwd=REPO, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines() if line.strip()]


def _pytest_runs(commands: list[list[str]]) -> list[list[str]]:
    return [c for c in commands if Path(c[0]).name == "pytest" or c[1:3] == ["-m", "pytest"]]


def test_make_setup_makes_a_venv_of_the_supported_python_and_installs_this_project():
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    commands = _make_n("setup")
    venv = [c for c in commands if c[1:3] == ["-m", "venv"]]
    assert len(venv) == 1 and venv[0][3] == ".venv", commands
    version = re.fullmatch(r"python(\d+\.\d+)", venv[0][0])
    assert version and SpecifierSet(project["requires-python"]).contains(version[1] + ".0"), venv[0]
    installs = [c for c in commands if c[0] == ".venv/bin/pip" and "-e" in c]
    assert len(installs) == 1, commands
    spec = installs[0][installs[0].index("-e") + 1]
    assert re.fullmatch(r"\.(\[[\w,-]+\])?", spec), spec
    extras = set(re.findall(r"[\w-]+", spec[1:]))
    assert extras <= set(project["optional-dependencies"]), f"unknown extras {extras}"
    assert "test" in extras, "the README's `make test` needs the test extra"


def test_make_demo_sets_up_then_runs_labeler_demo():
    commands = _make_n("demo")
    assert any(c[1:3] == ["-m", "venv"] for c in commands), "make demo sets up .venv first"
    assert commands[-1][:2] == [".venv/bin/labeler", "demo"], commands[-1]


def test_make_test_runs_the_whole_suite():
    runs = _pytest_runs(_make_n("test"))
    assert len(runs) == 1
    selecting = {"-m", "-k", "--deselect", "--ignore", "--lf", "-x", "--exitfirst"}
    assert not selecting & set(runs[0]) and not [a for a in runs[0][1:] if not a.startswith("-")], runs[0]
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]


def test_make_test_fast_deselects_every_tier_and_keeps_the_rest(tmp_path):
    """make test-fast's -m expression, run on a throwaway suite with one test per registered
    marker: only the unmarked test is selected."""
    runs = _pytest_runs(_make_n("test-fast"))
    assert len(runs) == 1
    expression = runs[0][runs[0].index("-m") + 1]
    markers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    names = [m.split(":")[0].strip() for m in markers]
    assert {"slow", "labelstudio", "postgres", "browser", "train"} <= set(names)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n" + "".join(f"    {m}\n" for m in markers))
    tests = ["import pytest\n", "def test_plain():\n    pass\n"]
    tests += [f"@pytest.mark.{name}\ndef test_{name}():\n    pass\n" for name in names]
    (tmp_path / "test_tiers.py").write_text("\n".join(tests))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "--strict-markers", "-p", "no:cacheprovider",
         "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), "-m", expression, str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.findall(r"::(test_\w+)", done.stdout) == ["test_plain"], done.stdout


def test_make_bench_runs_every_benchmark_into_benchmarks_md():
    commands = [c for c in _make_n("bench") if len(c) > 1 and c[1].startswith("benchmarks/")]
    assert commands, "make bench runs no benchmark"
    for command in commands:
        assert (REPO / command[1]).is_file(), command
        assert command[command.index("--out") + 1] == "BENCHMARKS.md", command
    scripts = {c[1] for c in commands}
    runnable = {f"benchmarks/{p.name}" for p in (REPO / "benchmarks").glob("*.py") if "__main__" in p.read_text()}
    assert runnable == scripts, f"benchmarks not run by make bench: {sorted(runnable - scripts)}"
