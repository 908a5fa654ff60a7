"""Asyncio adapters for the sans-I/O SIP stack (DESIGN.md §3, §5)."""
