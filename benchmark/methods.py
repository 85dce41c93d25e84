"""Method presets: the names the workflow and the tables use, as data.

A preset is a base optimiser plus which CCL terms are active. Adding a method is adding a row,
never a code branch. ``ccl_terms`` lists the lambdas that stay as configured; the others are
forced to zero (the ablations), and an empty tuple means "no CCL at all".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    algorithm: str
    ccl_terms: tuple[str, ...] = ()
    description: str = ""


METHODS: dict[str, Method] = {
    "dsgdm-n": Method("dsgdm-n", (), "DSGD with local Nesterov momentum"),
    "qgm": Method("qgm", (), "QG-DSGDm-N (quasi-global momentum)"),
    "relaysgd": Method("relaysgd", (), "RelaySGD on a spanning tree"),
    "ccl": Method("qgm", ("lambda_m", "lambda_d"), "QG-DSGDm-N + CCL (the paper's method)"),
    "ccl-dsgdm": Method("dsgdm-n", ("lambda_m", "lambda_d"), "DSGDm-N + CCL"),
    "ccl-relay": Method("relaysgd", ("lambda_m", "lambda_d"), "RelaySGD + CCL"),
    "ccl-mv": Method("qgm", ("lambda_m",), "QG-DSGDm-N + model-variant loss only"),
    "ccl-dv": Method("qgm", ("lambda_d",), "QG-DSGDm-N + data-variant loss only"),
}


def zeroed_lambdas(name: str) -> list[str]:
    """The CCL weights preset ``name`` forces to 0 whatever is configured."""
    return [k for k in ("lambda_m", "lambda_d") if k not in METHODS[name].ccl_terms]


def resolve_method(
    name: str, lambda_m: float, lambda_d: float
) -> tuple[str, dict[str, float] | None]:
    """Return (algorithm, ccl weights or None) for a preset name and the configured lambdas."""
    method = METHODS[name]
    if not method.ccl_terms:
        return method.algorithm, None
    configured = {"lambda_m": lambda_m, "lambda_d": lambda_d}
    weights = {k: (v if k in method.ccl_terms else 0.0) for k, v in configured.items()}
    return method.algorithm, weights
