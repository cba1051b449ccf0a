"""End to end on loopback: a real SuperNode behind the site forwarder activates at a real SuperLink via the gateway.

Both layers must pass: the gateway's mutual TLS and Flower's SuperNode
authentication (node key registered from the site registry). After
``revoke`` mid-federation, the node key is unregistered at the SuperLink, the
gateway refuses the site's certificate, and the site agent that was running
is cut off: its SuperNode, refused, shuts down; and ``fedguard client start``
with the revoked bundle says that the coordinator refused its certificate,
on its console and in its ``agent.log``, and exits 7 after ``--max-refused``
refused handshakes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from client.supernode import SiteAgent
from coordinator.deployment import CoordinatorService
from coordinator.superlink import control_client
from federation.bundle import SiteBundle, write_bundle
from tests.coordinator.federation_fixtures import client_context, credential_files, https_request, make_federation
from tests.integration.deployment import free_port

pytestmark = [pytest.mark.integration]


def _nodes(port: int, ca: Path) -> dict[str, tuple[str, str]]:
    from flwr.proto.control_pb2 import ListNodesRequest

    client = control_client(port, ca)
    try:
        infos = client.ListNodes(ListNodesRequest()).nodes_info  # type: ignore[attr-defined]
    finally:
        client.close()  # type: ignore[attr-defined]
    return {n.name: (n.status, n.unregistered_at) for n in infos}


def test_supernode_activates_through_forwarder_and_gateway_then_revocation_cuts_it_off(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fedguard")
    fed = make_federation(tmp_path)
    bundle = fed.enroll("st-marys")
    config = replace(fed.layout.read_config(), gateway_address="127.0.0.1", gateway_port=free_port(),
                     superlink_port=free_port())
    with CoordinatorService(fed.layout, config, fed.sites, sync_interval=3600) as service:
        assert _nodes(config.superlink_port, fed.layout.ca_cert) == {"st-marys": ("registered", "")}
        site_bundle = replace(bundle, endpoint=f"127.0.0.1:{service.gateway_port}")
        with SiteAgent(site_bundle, {"site-name": "st-marys"}, log_path=tmp_path / "supernode.log") as agent:
            deadline = time.monotonic() + 120
            while _nodes(config.superlink_port, fed.layout.ca_cert)["st-marys"][0] != "online":
                assert agent.alive(), (tmp_path / "supernode.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the SuperNode did not come online within 120 s"
                time.sleep(0.5)
            # The access line is written after the response, so it may trail the node's status change
            # (by as long as a starved scheduler likes: the deadline only bounds a hang).
            deadline = time.monotonic() + 120
            while '"POST /v1/fleet/activate-node HTTP/1.1" 200' not in (log := (
                    fed.layout.logs / "superlink.log").read_text()) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert '"POST /v1/fleet/activate-node HTTP/1.1" 200' in log

            fed.sites.revoke("st-marys")
            assert service.sync_now() == ([], ["st-marys"])
            assert _nodes(config.superlink_port, fed.layout.ca_cert)["st-marys"][1] != ""
            ca, cert, key = credential_files(bundle, tmp_path / "creds")
            with pytest.raises(ssl.SSLError, match="(?i)revoked"):
                https_request(client_context(ca, cert, key), service.gateway_port)

            # a site agent started with the revoked bundle says so and stops with exit 7 (runs meanwhile)
            refused = _revoked_agent(site_bundle, tmp_path / "revoked-site", fed.home)

            # the site agent still running is cut off: its next requests are refused (gateway: revoked
            # certificate; SuperLink: node key unregistered) and its SuperNode shuts down by itself
            assert agent.process is not None
            agent.process.wait(timeout=90)  # Flower's heartbeat is every 30 s
            assert "SuperNode terminated" in (tmp_path / "supernode.log").read_text()
            assert _nodes(config.superlink_port, fed.layout.ca_cert)["st-marys"][0] != "online"

            out, _ = refused.communicate(timeout=120)
            console = " ".join(out.decode(errors="replace").split())  # Rich wraps the log lines
            assert refused.returncode == 7, console[-3000:]  # CertificateRefusedError (docs/cli.md)
            assert "the coordinator refused this site's certificate: revoked (1 of 2" in console, console[-3000:]
            assert "refused this site's certificate (revoked) 2 times in a row" in console
            agent_log = (tmp_path / "revoked-site" / "home" / "site" / "st-marys" / "agent.log").read_text()
            assert "the coordinator refused this site's certificate: revoked" in agent_log
            gateway = [r.getMessage() for r in caplog.records if "refused: revoked: site st-marys" in r.getMessage()]
            assert gateway, "the gateway did not log the refusals with the site's name"


def _revoked_agent(bundle: SiteBundle, root: Path, coordinator_home: Path) -> subprocess.Popen[bytes]:
    """``fedguard client start --bundle <revoked bundle> --max-refused 2`` in its own FEDGUARD_HOME."""
    root.mkdir(parents=True)
    path = write_bundle(root / "site.bundle", bundle)
    (root / "data.csv").write_text("a\n1\n")  # never read: the SuperNode gets no message
    env = {**os.environ, "FEDGUARD_HOME": str(root / "home"), "FLWR_HOME": str(root / "flwr"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    assert not str(root).startswith(str(coordinator_home))
    return subprocess.Popen([sys.executable, "-m", "fedguard.cli", "client", "start", "--bundle", str(path),
                             "--data", str(root / "data.csv"), "--schema", str(root / "data.csv"),
                             "--max-refused", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _start_coordinator(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "fedguard.cli", "coordinator", "start"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, "the coordinator did not open its gateway in time"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)


def test_coordinator_start_runs_in_foreground_stops_on_sigterm_and_keeps_state(tmp_path: Path) -> None:
    fed = make_federation(tmp_path)
    fed.enroll("st-marys")
    config = replace(fed.layout.read_config(), gateway_address="127.0.0.1", gateway_port=free_port(),
                     superlink_port=free_port())
    fed.layout.write_config(config)
    env = {**os.environ, "FEDGUARD_HOME": str(fed.home), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    log = tmp_path / "coordinator.out"
    process = _start_coordinator(env, log)
    try:
        _wait_for_port(config.gateway_port, process, log)
        assert _nodes(config.superlink_port, fed.layout.ca_cert) == {"st-marys": ("registered", "")}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-2000:]
    assert "coordinator stopped" in log.read_text()
    with pytest.raises(OSError):  # the SuperLink went down with it
        socket.create_connection(("127.0.0.1", config.superlink_port), timeout=1).close()
    # a restart reads superlink.db: the node is already registered, and only once
    with CoordinatorService(fed.layout, config, fed.sites, sync_interval=3600) as service:
        assert service.sync_now() == ([], [])
        assert _nodes(config.superlink_port, fed.layout.ca_cert) == {"st-marys": ("registered", "")}
