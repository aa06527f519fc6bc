"""Clients of protocol v1: the event stream over WebSocket, `ask` (one-shot) and `talk` (TUI)."""
