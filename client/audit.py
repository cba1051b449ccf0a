"""The site's local audit log: one hash-chained JSON line per message the site sent, never the content.

Each outgoing reply (train, evaluate, query; content or error) is recorded by
:func:`site_audit_mod`, the outermost mod of the ClientApp, so it sees the
final bytes after secure aggregation and every other mod: time, run id,
round, message kind, record names, size in bytes and SHA-256 of the reply's
protobuf serialization (``RecordDict`` or ``Error``, deterministic). A site
operator can then prove what left the site and when, and compare digests
with the coordinator's side, without the log holding any update or record.

The log's mod is also where the site acts as a **witness** of the
coordinator's audit trail (:mod:`lifecycle.audit.witness`): each signed audit
checkpoint that arrives in a message's instructions is appended to the
witness file beside the log (``audit.witness.jsonl``, deduplicated by its
head), and the line of the reply notes it under ``witness``. A checkpoint the
site cannot trust (another key than the one it first saw, a bad signature)
is kept and logged as a warning; one that goes backwards or forks what it
witnessed is kept and logged as an error: never silently accepted.

Every line carries the hash of its predecessor and its own hash over its
canonical JSON (a linked timestamping chain, Haber & Stornetta 1991), so an
edited, removed or reordered line is detected by :func:`verify_log`. Lines
are appended under an exclusive lock and fsynced before the reply is handed
to Flower: a message that cannot be logged is not sent.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode
from flwr.common.serde import recorddict_to_proto
from flwr.common.serde_utils import error_to_proto

from client import logger
from client.config import site_name
from federation.protocol import CONFIG_RECORD, ProtocolError, WitnessCheckpoint, round_of
from lifecycle.audit.witness import MALFORMED, Observation, WitnessLog, witness_path
from lifecycle.errors import FedguardError, StateError, VerificationError
from lifecycle.home import SiteHome
from lifecycle.settings import get_settings
from privacy.records import config_record

GENESIS = "0" * 64
AUDIT_PATH_KEY = "audit-path"
Clock = Callable[[], datetime]


class AuditLogError(VerificationError):
    """The site's audit log does not verify: a line was altered, removed or reordered."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def wire_bytes(reply: Message | Error) -> bytes:
    """The reply as Flower serializes it: its ``RecordDict`` (or ``Error``) protobuf, deterministic."""
    if isinstance(reply, Error):
        return bytes(error_to_proto(reply).SerializeToString(deterministic=True))
    if reply.has_error():
        return wire_bytes(reply.error)
    return bytes(recorddict_to_proto(reply.content).SerializeToString(deterministic=True))


def _line_hash(entry: dict[str, Any]) -> str:
    body = json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _round_of(msg: Message) -> int | None:
    config = config_record(msg.content, CONFIG_RECORD) if msg.has_content() else None
    server_round = round_of(config) if config is not None else None
    if server_round is not None:
        return server_round
    group = str(msg.metadata.group_id)
    return int(group) if group.isdigit() else None


class SiteAuditLog:
    """An append-only JSON-lines file with a hash chain; ``now`` is injectable for tests."""

    def __init__(self, path: Path, *, now: Clock = _utcnow) -> None:
        self.path = Path(path)
        self.now = now

    def append(self, request: Message, reply: Message | Error, *,
               witness: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record that ``reply`` (answering ``request``) is about to leave the site; return the line.

        ``witness``: what the site made of a new audit checkpoint ``request``
        carried (:meth:`lifecycle.audit.witness.Observation.summary`).
        """
        blob = wire_bytes(reply)
        failed = isinstance(reply, Error) or reply.has_error()
        return self._append({
            "at": self.now().isoformat(),
            "run-id": int(request.metadata.run_id),
            "round": _round_of(request),
            "kind": str(request.metadata.message_type),
            "error": failed,
            "records": [] if isinstance(reply, Error) or failed else sorted(reply.content.keys()),
            "size": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
            **({"witness": dict(witness)} if witness else {}),
        })

    def append_document(self, kind: str, blob: bytes) -> dict[str, Any]:
        """Record that a document of ``kind`` leaves the site by hand (a consent withdrawal statement).

        The same line as a message's (size and SHA-256, never the content),
        outside any run (``run-id`` 0, no round).
        """
        return self._append({"at": self.now().isoformat(), "run-id": 0, "round": None, "kind": kind, "error": False,
                             "records": [], "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})

    def _append(self, entry: dict[str, Any]) -> dict[str, Any]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open the site audit log '{self.path}' ({exc.strerror}); the reply was "
                             "not sent: fix the node config's audit-path or its permissions") from None
        with os.fdopen(fd, "r+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            last = _last_line(handle)
            entry["seq"] = int(last["seq"]) + 1 if last else 1
            entry["prev"] = str(last["hash"]) if last else GENESIS
            entry["hash"] = _line_hash(entry)
            handle.write((json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode())
            handle.flush()
            os.fsync(handle.fileno())
        return entry


def _last_line(handle: Any) -> dict[str, Any] | None:
    """The last complete JSON line of the file (reads only its tail)."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return None
    window = 4096
    while True:
        start = max(0, size - window)
        handle.seek(start)
        tail = handle.read(size - start)
        lines = tail.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or start == 0:
            try:
                loaded: dict[str, Any] = json.loads(lines[-1])
            except json.JSONDecodeError:
                raise AuditLogError(f"the site audit log '{handle.name}' ends with a damaged line; "
                                    "run 'fedguard client audit --verify' and keep the file for inspection") from None
            return loaded
        window *= 4


def read_log(path: Path) -> Iterator[dict[str, Any]]:
    """The lines of a site audit log, parsed (no verification)."""
    try:
        with Path(path).open() as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    raise AuditLogError(f"line {number} of '{path}' is not valid JSON: the log was damaged") from None
    except FileNotFoundError:
        raise StateError(f"site audit log '{path}' does not exist") from None


def verify_log(path: Path) -> int:
    """Recompute the chain; return the number of lines.

    Raises
    ------
    AuditLogError
        Naming the first line whose link, sequence number or hash does not verify.
    """
    prev, count = GENESIS, 0
    for number, entry in enumerate(read_log(path), start=1):
        if entry.get("prev") != prev or entry.get("seq") != number:
            raise AuditLogError(f"line {number} of '{path}' does not follow line {number - 1}: a line was "
                                "removed, inserted or reordered")
        if _line_hash(entry) != entry.get("hash"):
            raise AuditLogError(f"line {number} of '{path}' was altered after it was written")
        prev, count = str(entry["hash"]), count + 1
    return count


def default_audit_path(context: Context) -> Path:
    """Node config ``audit-path``, else ``$FEDGUARD_HOME/site/<site>/audit.jsonl`` (:class:`SiteHome`)."""
    node = context.node_config
    if node.get(AUDIT_PATH_KEY):
        return Path(str(node[AUDIT_PATH_KEY]))
    return SiteHome.under(get_settings().home, site_name(node, context.node_id)).audit_log


def make_audit_mod(open_log: Callable[[Context], SiteAuditLog] = lambda c: SiteAuditLog(default_audit_path(c))) -> Mod:
    """A client mod recording every reply the app sends; install it first (outermost) on the ClientApp.

    An exception from the app is recorded as the error reply Flower's runtime
    builds from it (same code and reason format) and re-raised unchanged.
    """

    def site_audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        log = open_log(context)
        witnessed = witness(log.path, msg)
        try:
            reply = call_next(msg, context)
        except Exception as exc:
            reason = str(type(exc)) + ":<'" + str(exc) + "'>"  # as flwr.supernode.runtime.run_clientapp
            _record(log, msg, Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), witnessed)
            raise
        _record(log, msg, reply, witnessed)
        return reply

    return site_audit_mod


def witness(audit_log: Path, msg: Message) -> dict[str, Any] | None:
    """Witness the audit checkpoint ``msg`` carries, if any; what the audit log line keeps (None: nothing new).

    Witnessing never stops a message: a witness file that cannot be written
    is logged as an error and noted in the audit line instead.
    """
    config = config_record(msg.content, CONFIG_RECORD) if msg.has_content() else None
    try:
        notice = WitnessCheckpoint.from_record(config) if config is not None else None
    except ProtocolError as exc:
        notice, seen = None, Observation(MALFORMED, False, detail=str(exc)[:200])
    else:
        if notice is None:
            return None
        try:
            seen = WitnessLog(witness_path(audit_log)).observe(notice.checkpoint, notice.public_key)
        except (FedguardError, OSError) as exc:
            logger.error("audit checkpoint not witnessed: %s", exc)
            return {"status": "unrecorded", "detail": str(exc)[:200]}
    if seen.damaged:
        logger.error("audit witness alarm: %d damaged line(s) in %s (line %s) are skipped; witnessing goes on. Keep "
                     "the file for an auditor; 'fedguard client witness --out FILE' exports the good lines",
                     len(seen.damaged), witness_path(audit_log), ", ".join(map(str, seen.damaged[:10])))
    if seen.alarm:
        logger.error("audit checkpoint alarm (%s): %s; event %s, %s events, head %s; keep %s for an auditor",
                     seen.status, seen.detail, seen.event_id, seen.events, seen.hash[:16], witness_path(audit_log))
    elif seen.warning and (seen.new or seen.status == MALFORMED):
        logger.warning("audit checkpoint not trusted (%s): %s", seen.status, seen.detail)
    return seen.summary() if seen.new or seen.status == MALFORMED else None


def _record(log: SiteAuditLog, msg: Message, reply: Message | Error, witnessed: Mapping[str, Any] | None = None,
            ) -> None:
    entry = log.append(msg, reply, witness=witnessed)
    logger.debug("audit: %s reply for round %s, %d bytes, sha256 %s", entry["kind"], entry["round"],
                 entry["size"], entry["sha256"][:16])


site_audit_mod: Mod = make_audit_mod()
"""The default audit mod (log path from the node config)."""
