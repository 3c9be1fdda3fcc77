"""Errors shared by all services."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad setting or topology file: says which file, which key and what is wrong, in one line."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")
