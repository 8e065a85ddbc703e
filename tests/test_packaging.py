"""The project's own files: docker/, scripts, README commands, layering rules."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ct_stream.records import RecordSchema

REPO = Path(__file__).resolve().parents[1]


def _dockerfile_sources() -> list[str]:
    """What docker/Dockerfile copies from the build context (not from another stage)."""
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    return [src for line in dockerfile.splitlines() if line.startswith("COPY ") and "--from=" not in line
            for src in line.split()[1:-1]]


def test_dockerfile_copies_only_paths_that_exist():
    sources = _dockerfile_sources()
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"docker/Dockerfile copies {src}, which the repository lacks"


def test_dockerfile_copies_what_the_build_needs():
    """The package, and the native crate pyproject.toml builds it from."""
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "README.md", "ct_stream"}
    needed |= {Path(m["path"]).parts[0] for m in pyproject["tool"]["setuptools-rust"]["ext-modules"]}
    assert needed <= set(_dockerfile_sources())


def test_compose_file_wires_the_demo_to_kafka():
    compose = yaml.safe_load((REPO / "docker" / "docker-compose.yml").read_text())
    kafka, demo = compose["services"]["kafka"], compose["services"]["demo"]
    assert (REPO / "docker" / demo["build"]["context"] / demo["build"]["dockerfile"]).is_file()
    assert demo["depends_on"]["kafka"]["condition"] == "service_healthy"
    command = demo["command"]
    assert command[0] == "demo" and command[command.index("--bootstrap") + 1] == "kafka:9092"
    assert (REPO / command[command.index("--topology") + 1]).is_file()
    assert "PLAINTEXT://kafka:9092" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert commands[0].endswith("ct-stream demo") and "pip install" in commands[0]
    assert commands[1] == "scripts/test"
    ci = (REPO / ".ci" / "run").read_text()
    assert "exec scripts/test\n" in ci


def test_only_the_kafka_package_imports_confluent_kafka():
    offenders = []
    for path in (REPO / "ct_stream").rglob("*.py"):
        if path.parent.name == "kafka" and path.parent.parent.name == "ct_stream":
            continue
        if re.search(r"^\s*(from|import)\s+confluent_kafka", path.read_text(), re.M):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_only_the_cli_reads_environment_variables():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "ct_stream").rglob("*.py")
                 if p.name != "cli.py" and re.search(r"os\.environ|getenv", p.read_text())]
    assert offenders == []


def test_pure_layers_import_no_kafka_at_runtime():
    code = ("import sys; import ct_stream.records, ct_stream.topology, ct_stream.synthetic; "
            "print('confluent_kafka' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "ct_stream.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "broker", "validate", "--bootstrap"):
        assert command in out.stdout


def test_run_without_a_bootstrap_says_what_is_missing():
    out = subprocess.run([sys.executable, "-m", "ct_stream.cli", "run", str(REPO / "topologies" / "clicks.py")],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 2
    assert "--bootstrap: missing; allowed: HOST:PORT" in out.stderr


def test_the_native_module_is_built_when_cargo_is_present():
    """`pip install` builds ct_stream._native optionally (a failed build only warns): a
    machine with cargo must have it, or the native path would silently be the Python
    one. (Here, not in test_native.py, whose tests skip without the module.)"""
    from ct_stream.native import module

    if shutil.which("cargo") is None:
        pytest.skip("no cargo on PATH: the pure-Python path is expected")
    assert module is not None
    assert RecordSchema(features={"x": "float"}, label_type="binary")._native_decoder is not None
