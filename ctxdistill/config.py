"""What every stage's config dataclass shares: built from the dict a job stores, unknown keys refused."""

from __future__ import annotations

from dataclasses import asdict, fields


class StageConfig:
    """Base for the per-stage config dataclasses (generate, revise, train, evaluate)."""

    error: type[Exception] = ValueError  # raised for unknown keys
    what: str = "option"  # named in that error

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise cls.error(f"unknown {cls.what}(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)
