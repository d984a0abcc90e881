"""Where clients run: `vectorised` (one vmapped cohort), `sequential` (the reference) and
`ray` (the cohort sharded across Ray workers, each vectorised; imported only when asked for,
as Ray is an optional dependency)."""

from __future__ import annotations

from privlearn.fl.engine.base import CohortResult, Engine, TrainData
from privlearn.fl.engine.sequential import SequentialEngine
from privlearn.fl.engine.vectorised import VectorisedEngine

ENGINES = ("vectorised", "sequential", "ray")


def make_engine(
    name: str,
    chunk_size: int | None = None,
    compile: bool = False,
    *,
    ray_workers: int | None = None,
    ray_address: str | None = None,
    threads: int | None = None,
) -> Engine:
    if name != "ray" and (ray_workers is not None or ray_address is not None):
        raise ValueError("ray_workers and ray_address apply to the ray engine only")
    if name == "vectorised":
        return VectorisedEngine(chunk_size=chunk_size, compile=compile)
    if name == "sequential":
        if compile or chunk_size:
            raise ValueError("chunk_size and compile apply to the vectorised engine only")
        return SequentialEngine()
    if name == "ray":
        from privlearn.fl.engine.ray import RayEngine

        return RayEngine(ray_workers, ray_address, chunk_size, compile, threads or 1)
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
