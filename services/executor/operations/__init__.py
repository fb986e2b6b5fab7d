"""The registry of operations: the five built in, plus plugins from the `object_processing.operations` group."""

from functools import cache
from typing import cast

from libs.common.domain import Operation
from libs.common.options import OPTIONS_MODELS
from libs.common.registry import PluginError, plugin_specs
from services.executor.operations import analyze, enrich, export, transform, validate
from services.executor.operations.base import OperationSpec

BUILT_IN: dict[str, OperationSpec] = {
    op.value: OperationSpec(name=op.value, options_model=OPTIONS_MODELS[op], run=module.run)
    for op, module in (
        (Operation.VALIDATE, validate),
        (Operation.TRANSFORM, transform),
        (Operation.ENRICH, enrich),
        (Operation.ANALYZE, analyze),
        (Operation.EXPORT, export),
    )
}


@cache
def registry() -> dict[str, OperationSpec]:
    operations = dict(BUILT_IN)
    for name, spec in plugin_specs().items():
        if not callable(getattr(spec, "run", None)):
            msg = f"plugin operation {name!r} has no callable `run`"
            raise PluginError(msg)
        operations[name] = cast(OperationSpec, spec)
    return operations
