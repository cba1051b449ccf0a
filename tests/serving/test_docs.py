"""The curl examples of docs/serving.md, run in document order against a real server.

Convention (for everyone who writes docs/serving.md)
----------------------------------------------------
- Every fenced block opened with ```` ```bash ```` that contains ``curl`` is
  run, in document order, by ``bash -euo pipefail`` against one real uvicorn
  server (port 0) serving the signed model ``demo`` (4 features ``f0``…``f3``,
  labels ``no``/``yes``; ``f0`` limited to [-100, 100] by
  ``FEDGUARD_SERVE_FEATURE_RANGES``). Blocks share that server, so state
  (a revoked key, a rollout) carries over to the blocks below.
- The block sees ``URL`` (base URL, no trailing slash), ``KEY`` (a predict
  key), ``ADMIN_KEY`` (an admin key) and ``FEDGUARD_HOME`` (the server's
  registry, so ``fedguard keys ...`` works). Shell variables do not carry
  from one block to the next.
- ``curl`` is wrapped: it runs silent (``-sS``) and reports each answer's HTTP
  status on stderr (so stdout stays the body, and pipes such as
  ``| python3 -m json.tool`` work). Do not pass ``-w``/``--write-out``.
- A first line ``# expect: <status>`` (e.g. ``# expect: 422``) sets the status
  the block's **last** curl must answer; without it, 200. Every earlier curl
  of the block must answer 2xx. The block must exit 0.
- Show expected output as comments (``# → {"status":"ok"}``). A block that
  must not run (starting a server, changing the environment, output shown
  inline) is fenced ```` ```console ```` instead.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifecycle.registry import Registry, VersionRecord
from serving.guards.keys import create_key
from serving.settings import ServingSettings
from tests.serving.test_integration import running

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
EXPECT = re.compile(r"#\s*expect:\s*([1-5][0-9][0-9])\s*$")
STATUS_MARK = "fedguard-docs-status:"
# The wrapper keeps stdout the response body; statuses go to stderr behind a marker.
PRELUDE = (
    "curl() { command curl -sS --write-out '%{stderr}" + STATUS_MARK + "%{http_code}\\n' \"$@\"; }\n"
)
DOCS_RANGES = {"demo": {"f0": (-100.0, 100.0)}}


@dataclass(frozen=True)
class Block:
    """One runnable example: where it is, its text and the status its last curl must answer."""

    line: int
    heading: str
    code: str
    expect: int


def runnable_blocks(markdown: str) -> list[Block]:
    """The ```bash blocks that contain ``curl``, in document order."""
    blocks = []
    for match in FENCE.finditer(markdown):
        language, code = match.group(1), match.group(2)
        if language != "bash" or "curl" not in code:
            continue
        before = markdown[: match.start()]
        headings = re.findall(r"^#{1,6} (.+)$", FENCE.sub("", before), re.MULTILINE)  # not bash comments
        first = code.splitlines()[0] if code.strip() else ""
        expect = EXPECT.match(first.strip())
        blocks.append(Block(before.count("\n") + 1, headings[-1] if headings else "(top)", code,
                            int(expect.group(1)) if expect else 200))
    return blocks


@dataclass(frozen=True)
class Outcome:
    returncode: int
    statuses: list[int]
    stdout: str
    stderr: str

    def problem(self, expect: int) -> str | None:
        """Why the block failed its convention, or ``None``."""
        if self.returncode != 0:
            return f"the block exited {self.returncode}"
        if not self.statuses:
            return "no curl answered"
        early = [s for s in self.statuses[:-1] if not 200 <= s < 300]
        if early:
            return f"an earlier curl answered {early[0]} (only the last may answer other than 2xx)"
        if self.statuses[-1] != expect:
            return f"the last curl answered {self.statuses[-1]}, expected {expect}"
        return None


def run_block(code: str, env: dict[str, str], timeout: float = 60) -> Outcome:
    """Run ``code`` under ``bash -euo pipefail`` with the curl wrapper; collect the statuses."""
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", PRELUDE + code], env=env, capture_output=True,
                          text=True, timeout=timeout)
    statuses, stderr = [], []
    for line in done.stderr.splitlines():
        if line.startswith(STATUS_MARK):
            statuses.append(int(line[len(STATUS_MARK):]))
        else:
            stderr.append(line)
    return Outcome(done.returncode, statuses, done.stdout, "\n".join(stderr))


@pytest.fixture
def docs_settings() -> ServingSettings:
    """The server configuration the examples assume (add what a new section's examples need here)."""
    return ServingSettings(feature_ranges=DOCS_RANGES, quota_burst=1000, quota_rate=1000.0)


@pytest.fixture
def docs_server(
    registry: Registry, published: VersionRecord, docs_settings: ServingSettings
) -> Iterator[dict[str, str]]:
    """A real server for the examples, and the environment the blocks see."""
    predict = create_key(registry, "predict", "docs", actor="test")
    admin = create_key(registry, "admin", "docs-admin", actor="test")
    with running(registry, docs_settings) as port:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGUARD_SERVE_")}
        env.pop("FEDGUARD_DATABASE_URL", None)
        env.update(URL=f"http://127.0.0.1:{port}", KEY=predict.key, ADMIN_KEY=admin.key,
                   FEDGUARD_HOME=str(registry.home.root))
        yield env


def test_every_curl_example_of_docs_serving_answers_as_documented(docs_server: dict[str, str]) -> None:
    blocks = runnable_blocks(DOC.read_text())
    assert len(blocks) >= 8, "docs/serving.md lost its runnable examples"
    for block in blocks:
        outcome = run_block(block.code, docs_server)
        problem = outcome.problem(block.expect)
        assert problem is None, (
            f"docs/serving.md line {block.line} ({block.heading}): {problem}\n--- block ---\n{block.code}"
            f"--- stdout ---\n{outcome.stdout[-2000:]}\n--- stderr ---\n{outcome.stderr[-2000:]}"
        )


def test_the_harness_reads_the_convention_and_catches_a_wrong_status(docs_server: dict[str, str]) -> None:
    markdown = (
        "# A\n```console\n$ curl -s $URL/healthz\n```\n"
        "## B\n```bash\n# expect: 404\ncurl $URL/nowhere\n```\n"
        "```bash\necho no request here\n```\n"
        "```bash\ncurl $URL/healthz | python3 -c "
        "'import json,sys; assert json.load(sys.stdin)[\"status\"] == \"ok\"'\n```\n"
    )
    blocks = runnable_blocks(markdown)
    assert [(b.line, b.heading, b.expect) for b in blocks] == [(6, "B", 404), (13, "B", 200)]
    assert run_block(blocks[0].code, docs_server).problem(404) is None
    assert run_block(blocks[1].code, docs_server).problem(200) is None
    wrong = run_block("curl $URL/healthz", docs_server)
    assert wrong.statuses == [200] and wrong.problem(404) == "the last curl answered 200, expected 404"
    early = run_block("curl $URL/nowhere\ncurl $URL/healthz", docs_server)
    assert early.problem(200) == "an earlier curl answered 404 (only the last may answer other than 2xx)"
    assert run_block("curl $URL/healthz\nfalse", docs_server).problem(200) == "the block exited 1"
