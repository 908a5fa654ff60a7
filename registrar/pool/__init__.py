"""The pool: registrar sequences, membership (heartbeats), routing decisions (DESIGN.md §4)."""
