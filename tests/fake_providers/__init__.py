"""A local stand-in for the model providers' HTTP APIs, behaving like a todo model (see ``server.py``)."""

from .brain import GREETING
from .server import FAILURE_KINDS, FailureKind, FakeProviderServer, Provider, RecordedRequest

__all__ = ["FAILURE_KINDS", "GREETING", "FailureKind", "FakeProviderServer", "Provider", "RecordedRequest"]
