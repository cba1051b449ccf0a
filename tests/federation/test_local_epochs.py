"""Local epochs chosen from the record-level ε when a run leaves them at 0 (docs/research.md, utility under DP)."""

from __future__ import annotations

import pytest

from coordinator.config import CoordinatorConfig
from federation.defaults import (
    DEFAULT_LOCAL_EPOCHS,
    NON_PRIVATE_LOCAL_EPOCHS,
    STRONG_PRIVACY_EPSILON,
    STRONG_PRIVACY_LOCAL_EPOCHS,
    local_epochs_for,
)
from lifecycle.errors import ConfigurationError


def test_a_run_that_sets_its_epochs_keeps_them() -> None:
    assert local_epochs_for(3, 1.0) == 3
    assert local_epochs_for(2, 0.0) == 2


def test_unset_epochs_are_fewer_under_strong_privacy_only() -> None:
    assert DEFAULT_LOCAL_EPOCHS == 0
    assert local_epochs_for(0, 1.0) == local_epochs_for(0, 0.5) == STRONG_PRIVACY_LOCAL_EPOCHS == 1
    assert local_epochs_for(0, STRONG_PRIVACY_EPSILON) == local_epochs_for(0, 8.0) == NON_PRIVATE_LOCAL_EPOCHS == 2
    assert local_epochs_for(0, 0.0) == NON_PRIVATE_LOCAL_EPOCHS


@pytest.mark.parametrize(("epsilon", "epochs"), [(1.0, 1), (2.9, 1), (3.0, 2), (8.0, 2), (0.0, 2)])
def test_the_coordinator_resolves_the_default(epsilon: float, epochs: int) -> None:
    assert CoordinatorConfig.from_mapping({"dp-epsilon": epsilon}).local_epochs == epochs
    assert CoordinatorConfig.from_mapping({"dp-epsilon": epsilon, "local-epochs": 4}).local_epochs == 4


def test_a_negative_count_is_still_refused() -> None:
    with pytest.raises(ConfigurationError, match="local-epochs"):
        CoordinatorConfig.from_mapping({"local-epochs": -1})
