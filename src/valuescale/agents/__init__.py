"""Agents as pure functions over explicit state pytrees (``bro``; SimbaV2 reserved)."""
