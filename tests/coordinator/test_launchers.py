"""Command building for the SuperLink and the SuperNode, and the CLI's provisioning commands (no process started)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from client.cli import site_node_config
from client.forwarder import loopback_certificate
from client.runtime_options import supernode_command, supernode_env, supernode_flags
from client.supernode import HE_SECRET_CONTEXT_KEY, SiteAgent, materialize, node_config, supernode_argv
from coordinator.provisioning import FederationLayout
from coordinator.runtime_options import superlink_env, superlink_flags
from coordinator.superlink import check_insecure, flower_env, is_loopback, superlink_argv
from federation.bundle import BundlePermissionError, read_bundle
from fedguard.cli import app
from lifecycle.errors import ConfigurationError, StateError
from tests.coordinator.federation_fixtures import make_federation

runner = CliRunner()


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_superlink_argv_has_tls_node_auth_persistent_state_and_loopback(tmp_path: Path) -> None:
    fed = make_federation(tmp_path)
    config = fed.layout.read_config()
    argv = superlink_argv(fed.layout, config, extra=["--opt", "1"])
    assert argv[0].endswith("flower-superlink")
    assert _flag(argv, "--host") == "127.0.0.1" and _flag(argv, "--port") == str(config.superlink_port)
    assert _flag(argv, "--database") == str(fed.layout.superlink_db)
    assert _flag(argv, "--ssl-certfile") == str(fed.layout.server_cert)
    assert _flag(argv, "--ssl-keyfile") == str(fed.layout.server_key)
    assert _flag(argv, "--ssl-ca-certfile") == str(fed.layout.ca_cert)
    assert "--enable-supernode-auth" in argv and "--disable-runtime-dependency-installation" in argv
    assert "--insecure" not in argv and argv[-2:] == ["--opt", "1"]
    assert all(flag in argv for flag in superlink_flags())  # the latency options, in one place
    assert argv.count("--disable-runtime-dependency-installation") == 1
    insecure = superlink_argv(fed.layout, config, insecure=True)
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure
    assert not any(a.startswith("--ssl") for a in insecure)


def test_superlink_env_has_the_runtime_options_and_a_federation_flwr_home(tmp_path: Path) -> None:
    fed = make_federation(tmp_path)
    env = flower_env(fed.layout, {"PATH": "/bin", "FLWR_TELEMETRY_ENABLED": "1"})
    expected = superlink_env({"PATH": "/bin"})
    assert {k: env[k] for k in expected} == expected  # quiet (telemetry off wins) and fast polling
    assert env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] and env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_HOME"] == str(fed.layout.root / "flwr")


def test_insecure_only_on_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost"]))
    check_insecure(["127.0.0.1", "::1"])
    for bound in (["0.0.0.0"], ["127.0.0.1", "10.0.0.5"], ["coord.example"]):
        with pytest.raises(ConfigurationError, match="--insecure is refused"):
            check_insecure(bound)


def test_supernode_argv_and_node_config_round_trip(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    fed = make_federation(tmp_path)
    bundle = fed.enroll("st-marys")
    files = materialize(bundle, *loopback_certificate())
    try:
        assert stat.S_IMODE(os.stat(files.root).st_mode) == 0o700
        for key in (files.site_key, files.node_key, files.loopback_key, files.superexec_secret):
            assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        values = site_node_config("st-marys", tmp_path / "my data.csv", tmp_path / "schema.toml",
                                  tmp_path / "audit.jsonl", tmp_path / "ledger.db", 4.5)
        argv = supernode_argv(files, 4242, values, runtime_port=4343)
        program = supernode_command()
        assert argv[:len(program)] == program and program[-2:] == ["-m", "client.runtime"]  # the warm executor
        assert all(flag in argv for flag in supernode_flags())
        agent = SiteAgent(bundle, values, log_path=tmp_path / "log", env={"PATH": "/bin", "FEDGUARD_HOME": "/h"})
        assert agent.process_env() == {**supernode_env({"PATH": "/bin", "FEDGUARD_HOME": "/h"}),
                                       "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache" / "torchinductor")}
        assert agent.process_env()["FLWR_TELEMETRY_ENABLED"] == "0"
        assert _flag(argv, "--superlink") == "127.0.0.1:4242"
        assert _flag(argv, "--root-certificates") == str(files.loopback_cert)
        assert _flag(argv, "--auth-supernode-private-key") == str(files.node_key)
        assert (_flag(argv, "--host"), _flag(argv, "--port")) == ("127.0.0.1", "4343")
        assert _flag(argv, "--superexec-auth-secret-file") == str(files.superexec_secret)  # in the agent's folder
        assert "--insecure" not in argv
        parsed = parse_config_args([_flag(argv, "--node-config")])
        assert parsed == {"site-name": "st-marys", "data-path": str(tmp_path / "my data.csv"),
                          "schema-path": str(tmp_path / "schema.toml"), "audit-path": str(tmp_path / "audit.jsonl"),
                          "ledger-path": str(tmp_path / "ledger.db"), "epsilon-cap": 4.5}
        assert "epsilon-cap" not in parse_config_args([node_config(site_node_config(
            "s", tmp_path, tmp_path, tmp_path, tmp_path, None))])
    finally:
        shutil.rmtree(files.root)


def test_cli_init_enroll_rotate_revoke_list(fedguard_home: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["coordinator", "init", "--federation", "cardio", "--address", "10.1.2.3"])
    assert result.exit_code == 0, result.output
    assert FederationLayout.under(fedguard_home).read_config().endpoint == "10.1.2.3:9443"
    for name in ("st-marys", "guys"):
        result = runner.invoke(app, ["site", "enroll", name, "--out", str(tmp_path / f"{name}.bundle"), "--json"])
        assert result.exit_code == 0, result.output
        assert stat.S_IMODE(os.stat(tmp_path / f"{name}.bundle").st_mode) == 0o600
    before = read_bundle(tmp_path / "guys.bundle")
    assert runner.invoke(app, ["site", "rotate", "st-marys", "--out", str(tmp_path / "st2.bundle")]).exit_code == 0
    assert runner.invoke(app, ["site", "revoke", "st-marys"]).exit_code == 0
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["site", "list", "--json"]).stdout)}
    assert rows["st-marys"]["status"] == "revoked" and rows["st-marys"]["credentials_issued"] == 2
    guys_serial = format(x509.load_pem_x509_certificate(before.site_cert.encode()).serial_number, "x")
    assert rows["guys"]["status"] == "active" and rows["guys"]["cert_serial"] == guys_serial
    again = runner.invoke(app, ["site", "revoke", "st-marys"])
    assert isinstance(again.exception, StateError) and again.exception.exit_code == 3


def test_cli_refuses_insecure_off_loopback_and_lax_bundles(fedguard_home: Path, tmp_path: Path) -> None:
    assert runner.invoke(app, ["coordinator", "init", "--federation", "cardio"]).exit_code == 0
    result = runner.invoke(app, ["coordinator", "start", "--insecure", "--gateway-address", "0.0.0.0"])
    assert isinstance(result.exception, ConfigurationError) and result.exception.exit_code == 2
    assert runner.invoke(app, ["site", "enroll", "st-marys", "--out", str(tmp_path / "b")]).exit_code == 0
    (tmp_path / "b").chmod(0o644)
    (tmp_path / "d.csv").write_text("a\n1\n")
    result = runner.invoke(app, ["client", "start", "--bundle", str(tmp_path / "b"), "--data",
                                 str(tmp_path / "d.csv"), "--schema", str(tmp_path / "d.csv")])
    assert isinstance(result.exception, BundlePermissionError) and "chmod 600" in str(result.exception)


def test_cli_without_a_federation_says_what_to_do(fedguard_home: Path) -> None:
    result = runner.invoke(app, ["site", "list"])
    assert isinstance(result.exception, StateError) and "coordinator init" in str(result.exception)


def test_ckks_secret_context_travels_inside_the_bundle_to_the_site_agent(fedguard_home: Path, tmp_path: Path) -> None:
    """``site he-keys`` → ``site enroll|rotate --he-secret-context`` → the agent's 0700 folder and node config."""
    from privacy.he.errors import HEKeyError
    from privacy.he.keys import load_coordinator_context, load_site_context
    from privacy.he.mod import SECRET_CONTEXT_KEY

    assert runner.invoke(app, ["coordinator", "init", "--federation", "cardio"]).exit_code == 0
    inside = runner.invoke(app, ["site", "he-keys", "--site-out", str(fedguard_home / "he")])
    assert isinstance(inside.exception, ConfigurationError)
    assert "out of the coordinator's reach" in str(inside.exception)
    made = runner.invoke(app, ["site", "he-keys", "--site-out", str(tmp_path / "he"), "--json"])
    assert made.exit_code == 0, made.output
    keys = json.loads(made.stdout)
    secret, public = Path(keys["secret_context"]), Path(keys["public_context"])
    assert public.parent == FederationLayout.under(fedguard_home).root and stat.S_IMODE(secret.stat().st_mode) == 0o600
    load_coordinator_context(public)  # the coordinator's file holds no secret key
    wrong = runner.invoke(app, ["site", "enroll", "kings", "--out", str(tmp_path / "k.bundle"),
                                "--he-secret-context", str(public)])
    assert isinstance(wrong.exception, HEKeyError) and wrong.exception.exit_code == 3  # a public context: refused
    assert not (tmp_path / "k.bundle").exists()
    result = runner.invoke(app, ["site", "enroll", "st-marys", "--out", str(tmp_path / "b"), "--he-secret-context",
                                 str(secret), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["he_key_id"] == keys["key_id"]
    bundle = read_bundle(tmp_path / "b")
    assert bundle.he_secret_bytes() == secret.read_bytes() and "he_secret" not in repr(bundle)
    rotated = runner.invoke(app, ["site", "rotate", "st-marys", "--out", str(tmp_path / "b2")])
    assert rotated.exit_code == 0 and read_bundle(tmp_path / "b2").he_secret_bytes() is None  # never stored
    assert "pass --he-secret-context" in rotated.output

    cert, key = loopback_certificate()
    files = materialize(bundle, cert, key)
    try:
        assert stat.S_IMODE(files.he_secret_context.stat().st_mode) == 0o600
        assert load_site_context(files.he_secret_context).is_private()
    finally:
        shutil.rmtree(files.root)
    assert HE_SECRET_CONTEXT_KEY == SECRET_CONTEXT_KEY  # the key ckks_mod reads


def test_site_columns_drop_columns_before_cutting_a_name() -> None:
    from datetime import UTC, datetime

    from coordinator.cli import SITE_COLUMNS, site_columns
    from coordinator.provisioning.sites import SiteInfo

    def info(name: str) -> SiteInfo:
        now = datetime(2026, 12, 1, tzinfo=UTC)
        return SiteInfo(name, "active", "ab" * 10, "cd" * 32, "ef" * 32, now, now, 1, None)

    assert site_columns([info("guys")], 200) == [title for title, _ in SITE_COLUMNS]
    short = site_columns([info("guys")], 80)
    assert short[:2] == ["site", "status"] and "expires" in short and "issued" not in short
    assert site_columns([info("x" * 60)], 80) == ["site", "status", "expires"]
    assert site_columns([info("x" * 64)], 40) == ["site", "status"]  # folds: nothing else to drop
