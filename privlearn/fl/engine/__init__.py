"""Where clients run: `vectorised` (one vmapped cohort) and `sequential` (the reference)."""

from __future__ import annotations

from privlearn.fl.engine.base import CohortResult, Engine, TrainData
from privlearn.fl.engine.sequential import SequentialEngine
from privlearn.fl.engine.vectorised import VectorisedEngine

ENGINES = ("vectorised", "sequential")


def make_engine(name: str, chunk_size: int | None = None, compile: bool = False) -> Engine:
    if name == "vectorised":
        return VectorisedEngine(chunk_size=chunk_size, compile=compile)
    if name == "sequential":
        if compile or chunk_size:
            raise ValueError("chunk_size and compile apply to the vectorised engine only")
        return SequentialEngine()
    raise ValueError(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}")


__all__ = [
    "ENGINES",
    "CohortResult",
    "Engine",
    "SequentialEngine",
    "TrainData",
    "VectorisedEngine",
    "make_engine",
]
