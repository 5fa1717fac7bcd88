"""Whazing Gateway: a mitmproxy addon that turns Whazing traffic into durable, signed webhooks."""

__version__ = "0.1.0"
