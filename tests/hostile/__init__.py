"""Hostile inputs, generated at test time: each is refused in one line, writes nothing, reads nothing outside."""
