"""Which operations exist: the five built in, plus any registered through the `object_processing.operations`
entry-point group by an installed package.

The gateway uses this to refuse unknown operations and bad options at submission; the executors use the same
entry points to run them. Every service must run with the same packages installed.
"""

from functools import cache
from importlib.metadata import entry_points
from typing import Protocol

from libs.common.domain import Operation
from libs.common.options import OPTIONS_MODELS, OperationOptions

ENTRY_POINT_GROUP = "object_processing.operations"


class PluginSpec(Protocol):
    """What an entry point must name: an object with the operation's name and options model (and `run`)."""

    name: str
    options_model: type[OperationOptions]


class PluginError(RuntimeError):
    """An installed plugin is unusable; services refuse to start rather than run without it."""


@cache
def plugin_specs() -> dict[str, PluginSpec]:
    specs: dict[str, PluginSpec] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        spec = entry.load()
        name = getattr(spec, "name", None)
        model = getattr(spec, "options_model", None)
        if name != entry.name or not (isinstance(model, type) and issubclass(model, OperationOptions)):
            msg = f"entry point {entry.name!r} ({entry.value}) must name an object with name={entry.name!r} and an OperationOptions options_model"
            raise PluginError(msg)
        if name in Operation.__members__.values() or name in specs:
            msg = f"operation {name!r} from {entry.value} is already defined"
            raise PluginError(msg)
        specs[name] = spec
    return specs


def operation_options() -> dict[str, type[OperationOptions]]:
    """Every available operation name and its options model, built-ins first."""
    models: dict[str, type[OperationOptions]] = {op.value: model for op, model in OPTIONS_MODELS.items()}
    models.update({name: spec.options_model for name, spec in plugin_specs().items()})
    return models
