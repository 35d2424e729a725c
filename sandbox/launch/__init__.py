"""The launch sequence (sequence.py): every step of a launch, top to bottom, in kernel order.
What crosses a process boundary on the way is sandbox/wire.py."""
