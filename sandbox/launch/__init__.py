"""The launch: what crosses a process boundary on the way from the supervisor to the program
(wire.py: one versioned encoding of the launch context)."""
