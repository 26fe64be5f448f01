"""The native layer's environment switches and their values: one place that reads them, so a mistyped value
is refused naming what the switch takes (:class:`SwitchError`, a ``ValueError`` the CLI prints as ``error: …``)
instead of silently running another path — even inside :func:`.layout.never_raises`, which lets it through.
"""
from __future__ import annotations

import os


class SwitchError(ValueError):
    """A switch set to a value it does not take."""


ON, OFF = ("1", "true", "on", "yes"), ("0", "false", "off", "no")
SWITCHES = {  # the native layer's environment switches: their values (unset: the first)
    "GENMODELS_NATIVE": ON + OFF,
    "GENMODELS_NATIVE_PREFILL": ON + OFF + ("bf16",),  # prefill.py
    "GENMODELS_NATIVE_QDOT": ("int8", "avx2", "fp32"),  # quant.py, read by csrc/qdot8.c itself
}


def switch(name: str) -> str:
    """``name``'s value, lower-cased (unset or empty: its default); a value it does not take is refused, naming
    what it takes — a mistyped switch never silently runs another path."""
    value = os.environ.get(name, "").strip().lower() or SWITCHES[name][0]
    if value not in SWITCHES[name]:
        allowed = ", ".join(SWITCHES[name])
        raise SwitchError(f"{name}={os.environ[name]!r}: allowed are {allowed} (unset: {SWITCHES[name][0]})")
    return value
