"""SIP protocol stack: sans-I/O message layer, framing, transactions, auth; asyncio transports."""
