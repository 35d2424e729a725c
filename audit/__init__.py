"""pysandbox audit: the event model, sinks, the escape-technique table and the log reader.

Pure Python; depends on neither `sandbox` nor `policies` (data flows YAML -> policies ->
sandbox -> audit). See docs/audit.md for the event format and
audit/schema/event.schema.json for the machine-readable contract.
"""
from __future__ import annotations

import os as _os

# The event model and the sinks are loaded on first use (PEP 562): `import audit.paths` — the state
# directory, which the CLI's launch-server client needs and nothing else — must not import json,
# threading and the rest (sandbox/server/lean.py).
_LAZY = {"DEFAULT_SEVERITY": "events", "EVENT_TYPES": "events", "SEVERITIES": "events",
         "EventError": "events", "Recorder": "events", "rfc3339": "events", "syscall_event_fields": "events",
         "CallbackSink": "sinks", "JsonlSink": "sinks", "MemorySink": "sinks", "SummarySink": "sinks",
         "SyslogSink": "sinks", "default_log_path": "sinks", "state_dir": "sinks"}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'audit' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value

SCHEMA_PATH = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "schema", "event.schema.json")

__all__ = ["Recorder", "EventError", "EVENT_TYPES", "SEVERITIES", "DEFAULT_SEVERITY", "rfc3339",
           "syscall_event_fields", "JsonlSink", "SummarySink", "SyslogSink", "MemorySink", "CallbackSink",
           "default_log_path", "state_dir", "SCHEMA_PATH", "validate", "new_sandbox_id"]

_validator = None


def validate(event: dict) -> None:
    """Raise jsonschema.ValidationError when `event` does not follow the schema (tests, tools;
    never on the launch path)."""
    global _validator
    if _validator is None:
        import json

        import jsonschema
        with open(SCHEMA_PATH) as f:
            schema = json.load(f)
        cls = jsonschema.validators.validator_for(schema)
        _validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    _validator.validate(event)


def new_sandbox_id() -> str:
    """A fresh sandbox id: 12 hex digits (like a short container id)."""
    return _os.urandom(6).hex()
