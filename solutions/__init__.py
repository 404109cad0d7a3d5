"""Reference solutions to exercises/ (same functions, signatures and docstrings, done)."""
