"""What every stage's config dataclass shares: built from the dict a job stores, unknown keys refused."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .safety import quote


class StageConfig:
    """Base for the per-stage config dataclasses (generate, revise, train, evaluate)."""

    error: type[Exception] = ValueError  # raised for unknown keys
    what: str = "option"  # named in that error

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise cls.error(f"unknown {cls.what}(s): {quote(', '.join(sorted(unknown)))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SamplingStageConfig(StageConfig):
    """The stages that sample answers from a model (generate, revise): which model, and how."""

    model: str = field(default="", metadata={"help": "model spec (empty: the workspace default)"})
    quantize: str = field(default="none", metadata={"help": "none, 4bit or auto (the precision policy)"})
    precision: str = field(
        default="auto", metadata={"help": "compute dtype: auto (the precision policy), bf16, fp16 or fp32"}
    )
    owner: str = field(default="", metadata={"help": "workspace owner"})
    sampling: dict = field(default_factory=dict)
    fixed_sampling = ()  # SamplingConfig fields the stage sets itself: not the user's to choose

    def check_precision(self) -> None:
        from .precision import check_choices

        check_choices(self.quantize, self.precision)

    def sampling_config(self):
        from .sampling import SamplingConfig

        return SamplingConfig(**self.sampling).validate()
