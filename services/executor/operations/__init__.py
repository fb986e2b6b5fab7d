"""The registry of operations: name -> options model and implementation."""

from libs.common.domain import Operation
from libs.common.options import OPTIONS_MODELS
from services.executor.operations import analyze, enrich, export, transform, validate
from services.executor.operations.base import OperationSpec

REGISTRY: dict[str, OperationSpec] = {
    op.value: OperationSpec(name=op.value, options_model=OPTIONS_MODELS[op], run=module.run)
    for op, module in (
        (Operation.VALIDATE, validate),
        (Operation.TRANSFORM, transform),
        (Operation.ENRICH, enrich),
        (Operation.ANALYZE, analyze),
        (Operation.EXPORT, export),
    )
}
