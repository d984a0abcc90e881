"""Step-level attacks: attacker rows run a rewritten client step inside the vmapped cohort."""

from __future__ import annotations
