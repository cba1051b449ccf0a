"""Job files: a flat TOML with hyphenated keys (the run config's own), plus CLI overrides.

``job.toml`` holds the keys of ``[tool.flwr.app.config]`` (DESIGN §7.10)::

    num-server-rounds = 5
    num-sites = 3
    dp-epsilon = 3.0
    secure-aggregation = "secagg+"
    model-name = "cardio"
    data-dir = "/srv/fedguard/reference"   # schema.json and test.csv; left out: what coordinator data wrote
    he-public-context = "..."              # ckks jobs; left out: FEDGUARD_HOME/federation/he-public-context.bin

``--set key=value`` overrides a key (the value is read as TOML, so
``--set dp-epsilon=2`` is a number and ``--set model-name=cardio`` a string).
The merged job is validated by :class:`coordinator.config.CoordinatorConfig`
before anything is submitted.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from coordinator.config import CoordinatorConfig
from lifecycle.errors import ConfigurationError


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as TOML (a bare word is a string)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigurationError(f"--set '{text}': write key=value, e.g. --set num-server-rounds=3")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


@dataclass(frozen=True)
class Job:
    """A validated job: the run config that will be submitted."""

    config: dict[str, Any]

    @classmethod
    def load(cls, path: Path, overrides: Sequence[str] = (), extra: Mapping[str, Any] | None = None,
             defaults: Mapping[str, Any] | None = None) -> Job:
        """Read ``path``, apply ``--set`` overrides then ``extra``, fill keys left empty from ``defaults``, validate.

        ``defaults`` are what the coordinator machine itself holds (the CKKS
        public context ``fedguard site he-keys`` wrote): a job names them only
        to use another file.
        """
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(f"job file '{path}' does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"job file '{path}' is not valid TOML: {exc}") from None
        nested = sorted(k for k, v in data.items() if isinstance(v, dict))
        if nested:
            raise ConfigurationError(f"job file '{path}': keep it flat (no tables); found {nested}")
        data.update(parse_override(item) for item in overrides)
        data.update(extra or {})
        data.update({key: value for key, value in (defaults or {}).items() if not data.get(key)})
        return cls.from_mapping(data)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Job:
        config = CoordinatorConfig.from_mapping(dict(data))  # unknown keys and bad values raise here
        if config.data_dir:
            data = {**data, "data-dir": str(Path(config.data_dir).resolve())}
        return cls(dict(data))

    @property
    def run_id(self) -> str:
        return str(self.config.get("run-id", ""))

    def with_run_id(self, run_id: str) -> Job:
        return Job({**self.config, "run-id": run_id})

    def dump(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tomli_w.dumps(self.config), encoding="utf-8")

    def run_config_arg(self) -> str:
        """The job as ``flwr run --run-config``'s space-separated TOML assignments."""
        return " ".join(f"{key}={tomli_w.dumps({'v': value})[4:].strip()}" for key, value in self.config.items())
