"""Robustness: poisoning and backdoor attacks (client behaviours) and the defences against
them (server steps over every field of the stacked uploads).

    from privlearn.fl.robust import ATTACKS, DEFENCES, build_attack, build_defence

`threat` defines Attack and Defence, `scenario` applies them in a round, `registry` builds
them by name; `attacks/` and `defences/` hold one module per family.
"""

from privlearn.fl.robust import attacks, defences  # noqa: F401  (registers them)
from privlearn.fl.robust.registry import (
    ATTACKS,
    DEFENCES,
    DataInfo,
    build_attack,
    build_defence,
    hyper_parameters,
)
from privlearn.fl.robust.scenario import Scenario
from privlearn.fl.robust.threat import Attack, Defence, choose_attackers

__all__ = [
    "ATTACKS",
    "DEFENCES",
    "Attack",
    "DataInfo",
    "Defence",
    "Scenario",
    "build_attack",
    "build_defence",
    "choose_attackers",
    "hyper_parameters",
]
