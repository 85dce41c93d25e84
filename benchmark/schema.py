"""What every options schema shares: the flag that says an option changes no result.

A field declared with ``json_schema_extra=MACHINE`` says where or how fast a run goes, or where
its inputs live, but changes none of its numbers; every other field changes results. The run
options (:class:`~benchmark.config.RunConfig`), each algorithm's own options
(:mod:`benchmark.algorithms`) and the tuning section all declare their fields this way, and the
checkpoint fingerprint, a study's resume check, the report's cells and the workflow's rerun
trigger all read this one flag (:func:`result_fields`).
"""

from __future__ import annotations

from pydantic import BaseModel
from pydantic.fields import FieldInfo

MACHINE = {"changes_results": False}


def changes_results(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return not isinstance(extra, dict) or extra.get("changes_results", True) is not False


def result_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of ``model`` that change a run's numbers."""
    return frozenset(name for name, info in model.model_fields.items() if changes_results(info))
