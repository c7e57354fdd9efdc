"""The shape of one data item, recorded once from the data and read by everything downstream
(data -> shape -> network -> denoiser -> generation), so that no network config carries it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataShape:
    """``channels`` x ``size`` (e.g. (28, 28) for images, (length,) for 1-D series) and the
    number of classes a conditional model knows (0: unconditional)."""

    channels: int
    size: tuple[int, ...]
    num_classes: int = 0

    @property
    def item(self) -> tuple[int, ...]:
        """The shape of one item, e.g. (1, 28, 28)."""
        return (self.channels, *self.size)

    def to_dict(self) -> dict:
        return {"channels": self.channels, "size": list(self.size), "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, values: dict, where: str = "shape") -> "DataShape":
        """Inverse of :meth:`to_dict`; ValueError naming ``where`` on a malformed record."""
        try:
            channels, size = values["channels"], tuple(values["size"])
            num_classes = values.get("num_classes", 0)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where}: malformed data shape record {values!r} ({e})") from None
        numbers = (channels, num_classes, *size)
        if not size or not all(isinstance(v, int) and not isinstance(v, bool) for v in numbers) \
                or channels < 1 or num_classes < 0 or min(size) < 1:
            raise ValueError(f"{where}: malformed data shape record {values!r}")
        return cls(channels, size, num_classes)
