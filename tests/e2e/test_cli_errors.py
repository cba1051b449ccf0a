"""Bad arguments and bad state: one line, a documented exit code, state untouched."""

from __future__ import annotations

from pathlib import Path

from lifecycle.packaging import publish_model
from lifecycle.registry import Registry
from lifecycle.settings import Settings
from tests.conftest import make_publication
from tests.e2e.conftest import run_cli


def _one_line_error(stderr: str) -> None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert lines and lines[-1].startswith("error:"), stderr


def test_zero_sites(cli_home: Path) -> None:
    result = run_cli(cli_home, "simulate", "--sites", "0")
    assert result.returncode == 2
    _one_line_error(result.stderr)
    assert "--sites 0" in result.stderr


def test_unknown_model(cli_home: Path) -> None:
    for command in (["models", "show", "ghost"], ["models", "verify", "ghost:2"]):
        result = run_cli(cli_home, *command)
        assert result.returncode == 4, result.stderr
        _one_line_error(result.stderr)
        assert "no model named 'ghost'" in result.stderr


def test_home_is_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    result = run_cli(blocker, "models", "list")
    assert result.returncode == 3
    _one_line_error(result.stderr)
    assert "not writable" in result.stderr and "FEDGUARD_HOME" in result.stderr
    assert blocker.read_text() == "keep me"


def test_corrupt_registry_is_left_alone(cli_home: Path) -> None:
    cli_home.mkdir()
    db = cli_home / "registry.db"
    db.write_bytes(b"\x00garbage" * 512)
    result = run_cli(cli_home, "models", "list")
    assert result.returncode == 3
    _one_line_error(result.stderr)
    assert "registry" in result.stderr
    assert db.read_bytes() == b"\x00garbage" * 512


def test_missing_public_key(cli_home: Path) -> None:
    registry = Registry.open(Settings(home=cli_home))
    publish_model(registry, make_publication())
    (cli_home / "keys" / "signing-key.pub.pem").unlink()
    result = run_cli(cli_home, "models", "verify", "demo")
    assert result.returncode == 3
    _one_line_error(result.stderr)
    assert "public key" in result.stderr and "missing" in result.stderr


def test_tampered_model_fails_verify_naming_the_file(cli_home: Path) -> None:
    registry = Registry.open(Settings(home=cli_home))
    version = publish_model(registry, make_publication())
    weights = version.artifact.model_dir / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = run_cli(cli_home, "models", "verify", "demo:1")
    assert result.returncode == 5
    _one_line_error(result.stderr)
    assert "weights.safetensors" in result.stderr


def test_missing_private_signing_key_stops_before_training(cli_home: Path) -> None:
    registry = Registry.open(Settings(home=cli_home))
    publish_model(registry, make_publication())
    public = cli_home / "keys" / "signing-key.pub.pem"
    before = public.read_bytes()
    (cli_home / "keys" / "signing-key.pem").unlink()
    result = run_cli(cli_home, "simulate", "--sites", "3", "--rounds", "1")
    assert result.returncode == 3
    _one_line_error(result.stderr)
    assert "signing key" in result.stderr and "missing" in result.stderr
    assert public.read_bytes() == before
    assert not (cli_home / "runs").exists() or not any((cli_home / "runs").iterdir())


def test_empty_registry_file_is_refused_not_rebuilt(cli_home: Path) -> None:
    cli_home.mkdir()
    db = cli_home / "registry.db"
    db.touch()
    result = run_cli(cli_home, "models", "list")
    assert result.returncode == 3, result.stderr
    _one_line_error(result.stderr)
    assert "empty (0 bytes)" in result.stderr and "backup" in result.stderr
    assert db.stat().st_size == 0


def _sql(db: Path, *statements: str) -> None:
    import sqlite3

    with sqlite3.connect(db) as conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def test_unknown_schema_revision_is_unusable_state(cli_home: Path) -> None:
    Registry.open(Settings(home=cli_home)).engine.dispose()
    _sql(cli_home / "registry.db", "UPDATE alembic_version SET version_num = '9999abc'")
    result = run_cli(cli_home, "models", "list")
    assert result.returncode == 3, result.stderr
    _one_line_error(result.stderr)
    assert "schema revision '9999abc'" in result.stderr and "internal error" not in result.stderr


def test_missing_table_is_named_as_damage(cli_home: Path) -> None:
    Registry.open(Settings(home=cli_home)).engine.dispose()
    _sql(cli_home / "registry.db", "DROP TABLE audit_event")
    result = run_cli(cli_home, "models", "list")
    assert result.returncode == 3, result.stderr
    _one_line_error(result.stderr)
    assert "damaged" in result.stderr and "audit_event" in result.stderr and "backup" in result.stderr
    assert "another application" not in result.stderr


def test_registry_edits_fail_verify_naming_the_field(cli_home: Path) -> None:
    registry = Registry.open(Settings(home=cli_home))
    publish_model(registry, make_publication())
    registry.engine.dispose()
    fine = run_cli(cli_home, "models", "verify", "demo")
    assert fine.returncode == 0, fine.stderr
    assert "registry agrees with the signed ML-BOM" in fine.stdout
    db = cli_home / "registry.db"
    _sql(db, "UPDATE site_participation SET epsilon = 0.01")
    result = run_cli(cli_home, "models", "verify", "demo")
    assert result.returncode == 5, result.stderr
    _one_line_error(result.stderr)
    assert "site_participation.epsilon of site 'site-0'" in result.stderr and "0.01" in result.stderr
    _sql(db, "UPDATE site_participation SET epsilon = 1.5",
         """UPDATE model_version SET metrics_json = '{"accuracy": 0.99}'""")
    result = run_cli(cli_home, "models", "verify", "demo", "--json")
    assert result.returncode == 5, result.stderr
    assert "model_version.metrics.accuracy" in result.stderr and result.stdout == ""


_SITE_SCHEMA = ('label = "y"\nlabel-values = ["0", "1"]\n\n'
                '[columns]\nname = { type = "category", values = ["café", "thé"] }\n')


def test_client_check_refuses_a_non_utf8_csv_naming_file_and_encoding(cli_home: Path, tmp_path: Path) -> None:
    schema = tmp_path / "schema.toml"
    schema.write_text(_SITE_SCHEMA, encoding="utf-8")
    data = tmp_path / "latin1.csv"
    data.write_bytes("name,y\ncafé,1\nthé,0\n".encode("latin-1"))
    result = run_cli(cli_home, "client", "check", "--data", str(data), "--schema", str(schema))
    assert result.returncode == 2, result.stderr
    _one_line_error(result.stderr)
    assert "latin1.csv" in result.stderr and "UTF-8" in result.stderr


def test_client_check_refuses_a_non_utf8_schema_naming_file_and_encoding(cli_home: Path, tmp_path: Path) -> None:
    schema = tmp_path / "schema.toml"
    schema.write_bytes(_SITE_SCHEMA.encode("latin-1"))
    data = tmp_path / "site.csv"
    data.write_text("name,y\ncafé,1\nthé,0\n", encoding="utf-8")
    result = run_cli(cli_home, "client", "check", "--data", str(data), "--schema", str(schema))
    assert result.returncode == 2, result.stderr
    _one_line_error(result.stderr)
    assert "schema.toml" in result.stderr and "UTF-8" in result.stderr


def test_client_check_accepts_a_utf8_csv_with_a_byte_order_mark(cli_home: Path, tmp_path: Path) -> None:
    schema = tmp_path / "schema.toml"
    schema.write_text(_SITE_SCHEMA, encoding="utf-8")
    data = tmp_path / "excel.csv"
    data.write_text("name,y\ncafé,1\nthé,0\n", encoding="utf-8-sig")
    result = run_cli(cli_home, "client", "check", "--data", str(data), "--schema", str(schema))
    assert result.returncode == 0, result.stdout + result.stderr


def test_simulate_refuses_an_infinite_epsilon(cli_home: Path) -> None:
    """ε = ∞ is no guarantee at all: refused, pointing at 0, the one spelling of "no DP"."""
    for flag in ("--dp-epsilon", "--site-epsilon"):
        result = run_cli(cli_home, "simulate", flag, "inf")
        assert result.returncode == 2, result.stderr
        _one_line_error(result.stderr)
        assert f"{flag} inf" in result.stderr and "or 0 " in result.stderr
    assert not (cli_home / "registry.db").exists()
