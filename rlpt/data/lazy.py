"""A sequence of Prompts made when accessed, so a dataset holds only compact state (Arrow columns, lengths)."""

from __future__ import annotations

from typing import Iterator, Sequence, overload

from rlpt.types import Prompt


class LazyPrompts(Sequence[Prompt]):
    """Subclasses give `__len__` and `make(i)` (0 <= i < len)."""

    def make(self, i: int) -> Prompt:
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> Prompt: ...

    @overload
    def __getitem__(self, i: slice) -> list[Prompt]: ...

    def __getitem__(self, i: int | slice) -> Prompt | list[Prompt]:
        if isinstance(i, slice):
            return [self.make(j) for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"prompt {i} of {len(self)}")
        return self.make(i % len(self))

    def __iter__(self) -> Iterator[Prompt]:
        return (self.make(i) for i in range(len(self)))
