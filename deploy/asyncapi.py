"""Writes each service's AsyncAPI document, generated from its FastStream broker, to docs/asyncapi/<service>.json.

    python -m deploy.asyncapi            # regenerate every document
    python -m deploy.asyncapi --check    # exit 1, naming the stale files, if a checked-in document differs

Brokers are built by the services' own `create_app` and never connected, so this runs offline. Settings are
the defaults only (`model_construct` reads neither the environment nor `.env`), with a placeholder instance id:
the documents must not depend on the machine that generates them.
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from faststream.redis import RedisBroker
from faststream.specification import AsyncAPI

from services.executor.app import create_app as create_executor
from services.executor.settings import ExecutorSettings
from services.gateway.app import create_app as create_gateway
from services.gateway.settings import GatewaySettings
from services.orchestrator.app import create_app as create_orchestrator
from services.orchestrator.settings import OrchestratorSettings
from services.progress.app import create_app as create_progress
from services.progress.settings import ProgressSettings

DOCS_DIR = Path(__file__).resolve().parents[1] / "docs" / "asyncapi"
INSTANCE_ID = "<instance_id>"
"""Stands in for the consumer name, which is the host name at run time."""


def _gateway() -> object:
    return create_gateway(GatewaySettings.model_construct(instance_id=INSTANCE_ID)).state.broker


def _orchestrator() -> object:
    return create_orchestrator(OrchestratorSettings.model_construct(instance_id=INSTANCE_ID)).broker


def _executor() -> object:
    return create_executor(ExecutorSettings.model_construct(instance_id=INSTANCE_ID)).broker


def _progress() -> object:
    return create_progress(ProgressSettings.model_construct(instance_id=INSTANCE_ID)).state.broker


BROKERS: dict[str, Callable[[], object]] = {
    "gateway": _gateway,
    "orchestrator": _orchestrator,
    "executor": _executor,
    "progress": _progress,
}


def build_broker(service: str) -> RedisBroker:
    broker = BROKERS[service]()
    if not isinstance(broker, RedisBroker):
        msg = f"the {service} app does not expose its RedisBroker"
        raise TypeError(msg)
    return broker


def generate(service: str) -> str:
    """The service's AsyncAPI 3.0 document as the JSON text that is checked in."""
    spec = AsyncAPI(
        build_broker(service),
        title=f"Object Processing API - {service}",
        version=version("object-processing-api"),
        description="Stream entries carry one field, `__data__`: the message JSON. See docs/events.md.",
    ).to_specification()
    document = _one_message_per_entry(spec.to_jsonable())
    # Sorted keys: FastStream keeps subscribers and publishers in WeakSets, so channel order varies between runs.
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def _one_message_per_entry(document: dict[str, Any]) -> dict[str, Any]:
    """A batch subscriber's handler takes a list (the entries of one read), and FastStream documents that list as
    the message's payload. Each stream entry holds one message, which is what a producer must write: the payload
    is documented as the list's item."""
    schemas = document.get("components", {}).get("schemas", {})
    for name, schema in schemas.items():
        if name.endswith(":Message:Payload") and schema.get("type") == "array":
            schemas[name] = {**schema["items"], "title": schema["title"]}
    return document


def generate_all() -> dict[str, str]:
    return {service: generate(service) for service in BROKERS}


def path_of(service: str, directory: Path = DOCS_DIR) -> Path:
    return directory / f"{service}.json"


def stale(directory: Path = DOCS_DIR) -> list[Path]:
    """Checked-in documents that are missing or differ from what the code generates."""
    return [
        path
        for service, text in generate_all().items()
        if not (path := path_of(service, directory)).is_file() or path.read_text(encoding="utf-8") != text
    ]


def write_all(directory: Path = DOCS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for service, text in generate_all().items():
        path = path_of(service, directory)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.asyncapi", description="Generate or check docs/asyncapi/<service>.json."
    )
    parser.add_argument("--check", action="store_true", help="fail if a checked-in document is out of date")
    parser.add_argument("--dir", type=Path, default=DOCS_DIR, help="where the documents live (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale(args.dir)
        for path in outdated:
            print(f"out of date: {path} (run `python -m deploy.asyncapi`)", file=sys.stderr)
        return 1 if outdated else 0
    for path in write_all(args.dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
