"""The device rule: auto picks CUDA, then Apple's MPS, then the CPU; a named device must exist."""
from __future__ import annotations

import pytest
import torch

from headsculpt_engine import devices
from headsculpt_engine.errors import InputError


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (True, False, "cuda"),
                                                 (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(devices, "mps_available", lambda: mps)
    assert devices.resolve_device("auto").type == expected
    assert devices.resolve_device(None).type == expected


def test_mps_by_name_needs_mps(monkeypatch):
    monkeypatch.setattr(devices, "mps_available", lambda: True)
    assert devices.resolve_device("mps") == torch.device("mps")
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    with pytest.raises(InputError, match="MPS .* has none"):
        devices.resolve_device("mps")


def test_this_cpu_build_reports_no_mps_and_bad_names_are_refused():
    assert devices.mps_available() is False  # the CPU build of torch used here has no Metal backend
    with pytest.raises(InputError, match="Unknown device 'gpu0'"):
        devices.resolve_device("gpu0")
    with pytest.raises(InputError, match="not supported"):
        devices.resolve_device("meta")
