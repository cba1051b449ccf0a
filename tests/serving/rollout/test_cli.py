"""`fedguard deploy ...`, mounted in a local Typer app exactly as ``fedguard.cli`` mounts it."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from lifecycle.artifacts import WEIGHTS_NAME
from lifecycle.errors import ConfigurationError, NotFoundError, SignatureError
from lifecycle.packaging import publish_model
from lifecycle.registry import DeploymentStore, Registry, VersionRecord
from lifecycle.registry.deployments import DeploymentConflict
from serving.rollout.cli import deploy_app
from tests.conftest import make_publication

app = typer.Typer()
app.add_typer(deploy_app, name="deploy")
runner = CliRunner()


@pytest.fixture
def two(registry: Registry, published: VersionRecord) -> Registry:
    """demo:1 (stable once adopted) and demo:2."""
    DeploymentStore(registry).adopt("demo", actor="serve")
    publish_model(registry, make_publication(seed=3))
    return registry


def deploy(*args: str) -> dict[str, object] | list[dict[str, object]]:
    result = runner.invoke(app, ["deploy", *args, "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, object] | list[dict[str, object]] = json.loads(result.stdout)
    return data


def test_a_whole_rollout_from_the_command_line(two: Registry) -> None:
    assert deploy("status") == [DeploymentStore(two).state("demo").to_dict()]
    assert deploy("canary", "demo", "2", "--weight", "10")["shares"] == {"1": 90.0, "2": 10.0}  # type: ignore[index]
    assert deploy("shadow", "demo", "2")["candidate_mode"] == "shadow"  # type: ignore[index]
    assert deploy("promote", "demo")["stable_version"] == 2  # type: ignore[index]
    assert deploy("rollback", "demo")["stable_version"] == 1  # type: ignore[index]
    assert deploy("kill", "demo", "--pin", "2", "--reason", "drill")["kill_mode"] == "pinned"  # type: ignore[index]
    assert deploy("revive", "demo")["killed"] is False  # type: ignore[index]
    history = deploy("history", "demo")
    assert isinstance(history, list)
    assert [e["action"] for e in history] == ["adopt", "canary", "shadow", "promote", "rollback", "kill", "revive"]
    assert all(str(e["actor"]).startswith("user:") for e in history[1:])
    assert history[5]["reason"] == "drill" and history[5]["shares"] == {"2": 100.0}


def test_human_output(two: Registry) -> None:
    killed = runner.invoke(app, ["deploy", "kill", "demo"])
    assert killed.exit_code == 0 and "killed, answering 503" in killed.stdout
    table = runner.invoke(app, ["deploy", "status"])
    assert table.exit_code == 0 and "503" in table.stdout and "demo" in table.stdout
    assert "kill" in runner.invoke(app, ["deploy", "history", "demo"]).stdout


def test_refusals_map_to_exit_codes(two: Registry) -> None:
    cases: list[tuple[list[str], type[Exception], int]] = [
        (["promote", "demo"], DeploymentConflict, 2),
        (["canary", "demo", "1"], DeploymentConflict, 2),
        (["canary", "demo", "2", "--weight", "0"], ConfigurationError, 2),
        (["kill", "demo", "--pin", "9"], NotFoundError, 4),
        (["history", "nope"], NotFoundError, 4),
    ]
    for args, error, code in cases:
        result = runner.invoke(app, ["deploy", *args])
        assert isinstance(result.exception, error), (args, result.output)
        assert result.exception.exit_code == code  # type: ignore[attr-defined]
    weights = two.get_version("demo", 2).artifact.model_dir / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    tampered = runner.invoke(app, ["deploy", "kill", "demo", "--pin", "2"])
    assert isinstance(tampered.exception, SignatureError) and tampered.exception.exit_code == 5
    assert WEIGHTS_NAME in str(tampered.exception)
    assert DeploymentStore(two).state("demo").revision == 1
