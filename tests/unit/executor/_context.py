from typing import TypeVar, cast

from libs.common.options import OperationOptions
from services.executor.operations.base import OperationContext
from services.executor.storage import Storage

OptionsT = TypeVar("OptionsT", bound=OperationOptions)


def make_context(
    options: OptionsT,
    *,
    identifier: str = "object-1",
    input_sha256: str = "0" * 64,
    input_bytes: int = 0,
    input_format: str = "json",
) -> OperationContext[OptionsT]:
    """A context for operations that never touch storage (all but export, which is tested against S3)."""
    return OperationContext(
        identifier=identifier,
        options=options,
        storage=cast(Storage, None),
        input_sha256=input_sha256,
        input_bytes=input_bytes,
        input_format=input_format,
    )
