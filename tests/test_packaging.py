"""The pinned requirement sets and the Docker image's recipe stay what the README says they are."""

import re

from .conftest import REPO

TEST_TOOLS = {"pytest", "pytest-django", "pytest-asyncio", "pytest-timeout", "pytest-cov", "playwright", "ruff", "mypy"}


def pins(name: str) -> dict[str, str]:
    """Return {package: version} of a compiled requirements file (names normalized)."""
    found = {}
    for line in (REPO / name).read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line):
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def direct(name: str) -> set[str]:
    """Return the packages named in an input file (without extras or versions)."""
    names = set()
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.sub(r"[-_.]+", "-", re.split(r"[\[=<>~!]", line, maxsplit=1)[0]).lower())
    return names


def test_every_package_is_pinned_and_the_runtime_set_is_part_of_the_development_set():
    runtime, development = pins("requirements.txt"), pins("requirements-dev.txt")
    assert direct("requirements.in") <= runtime.keys()
    assert direct("requirements-dev.in") <= development.keys()
    assert {name: development.get(name) for name in runtime} == runtime
    # Every non-comment line of a compiled file is a pin (no ranges, no unpinned names).
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (REPO / name).read_text().splitlines():
            assert not line.strip() or line.lstrip().startswith("#") or "==" in line, (name, line)


def test_the_runtime_set_has_no_test_tools():
    assert not TEST_TOOLS & pins("requirements.txt").keys()
    assert TEST_TOOLS <= pins("requirements-dev.txt").keys()


def test_the_image_installs_the_runtime_set_and_runs_as_a_user_of_its_own():
    recipe = (REPO / "Dockerfile").read_text()
    assert "pip install -r requirements.txt" in recipe
    assert "requirements-dev" not in recipe
    users = re.findall(r"^USER\s+(\S+)", recipe, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {"tests", ".venv", ".git", "requirements-dev.*"} <= set(ignored)
    compose = (REPO / "docker-compose.yml").read_text()
    assert "build: ." in compose and "dockerfile_inline" not in compose
