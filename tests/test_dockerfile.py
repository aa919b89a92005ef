"""The backend image (Dockerfile), read as data: one Python 3.11, one pip install of the product
with only the backend's extras (never test or bench), TensorFlow from that install alone, and a
final stage that carries the built environment and runs as a non-root user."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    found, current = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            instruction, _, args = current.strip().partition(" ")
            if instruction.upper() == "FROM":
                found.append([])
            found[-1].append((instruction.upper(), " ".join(args.split())))
        current = ""
    return found


def pip_installs() -> list[tuple[int, list[str]]]:
    """(stage index, pip install arguments) for every `pip install` of every RUN."""
    installs = []
    for index, stage in enumerate(stages()):
        for instruction, args in stage:
            if instruction == "RUN":
                for command in re.split(r"&&|;", args):
                    words = shlex.split(command)
                    if len(words) > 2 and words[0].endswith("pip") and words[1] == "install":
                        installs.append((index, words[2:]))
    return installs


def project_install() -> tuple[int, set[str], list[str]]:
    """(stage, extras, other arguments) of the one pip install of the product."""
    installs = pip_installs()
    assert len(installs) == 1, f"one pip install, not {installs}"
    index, args = installs[0]
    targets = [a for a in args if not a.startswith("-")]
    assert len(targets) == 1 and re.fullmatch(r"\.\[[\w,-]+\]|\.", targets[0]), args
    extras = set(re.findall(r"[\w-]+", targets[0][2:-1])) if "[" in targets[0] else set()
    return index, extras, [a for a in args if a != targets[0]]


def requirements(extras: set[str]) -> list[Requirement]:
    lines = PROJECT["dependencies"] + [r for extra in extras for r in PROJECT["optional-dependencies"][extra]]
    return [Requirement(r) for r in lines]


def test_the_product_is_installed_once_with_only_the_backend_extras():
    index, extras, others = project_install()
    assert extras, "the image needs the gpu extra for TensorFlow's CUDA wheels"
    assert extras <= set(PROJECT["optional-dependencies"]), extras
    assert not extras & {"test", "bench"}, extras
    assert "-e" not in others and "--editable" not in others, "an installed package, not a link to sources"
    runs = [args for stage in stages() for i, args in stage if i == "RUN"]
    assert not [r for r in runs if re.search(r"(^|&& )make\b", r)], "no make: its setup installs test extras"
    assert index < len(stages()) - 1, "built in a stage before the final one"


def test_tensorflow_comes_from_that_install_alone_with_cuda():
    _, extras, _ = project_install()
    pins = {str(r.specifier) for r in requirements(extras) if canonicalize_name(r.name) == "tensorflow"}
    assert len(pins) == 1, f"one TensorFlow version, not {pins}"
    assert any("and-cuda" in r.extras for r in requirements(extras) if r.name == "tensorflow")
    for stage in stages():
        base = stage[0][1].split()[0]
        assert not base.startswith("tensorflow/"), f"{base} carries a second TensorFlow"


def test_one_python_3_11_for_every_stage():
    bases = {stage[0][1].split()[0] for stage in stages()}
    assert len(bases) == 1, f"the environment is copied between stages: one base image, not {bases}"
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", bases.pop())
    assert PROJECT["requires-python"] == ">=3.11,<3.12"
    venvs = [args for stage in stages() for i, args in stage if i == "RUN" and " -m venv " in args]
    assert venvs and all(args.startswith("python3.11 -m venv /app/.venv") for args in venvs), venvs


def test_the_build_stage_gets_what_pyproject_names():
    index, _, _ = project_install()
    copied = set()
    for instruction, args in stages()[index]:
        if instruction == "COPY":
            copied.update(Path(p).as_posix() for p in args.split()[:-1])
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert {"pyproject.toml", PROJECT["readme"], *PROJECT["license-files"], *packages} <= copied, copied
    assert not {"tests", "benchmarks", "."} & copied


def test_the_final_stage_is_the_environment_run_as_a_user():
    final = stages()[-1]
    assert ("COPY", "--from=build /app/.venv /app/.venv") in final
    assert not [a for i, a in final if i == "RUN" and "pip" in a], "nothing installed in the final stage"
    users = [args for instruction, args in final if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = " ".join(args for instruction, args in final if instruction == "ENV")
    assert "PATH=/app/.venv/bin:$PATH" in env
    assert ("CMD", '["labeler-backend"]') in final
    assert "labeler-backend" in PROJECT["scripts"]
