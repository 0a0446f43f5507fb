"""Reliability experiments that print figures: fuzzing the server's API (more to come: soak, faults)."""
