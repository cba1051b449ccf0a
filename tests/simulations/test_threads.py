"""The simulation driver's torch thread setting is scoped to its block."""

from __future__ import annotations

import pytest
import torch

from simulations.threads import single_torch_thread


def test_one_thread_inside_and_the_setting_restored_after_an_error() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError), single_torch_thread():
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
