"""The root of all resources: data that lives in memory or on disk."""

from abc import ABC, abstractmethod
from typing import ClassVar


class Resource(ABC):
    """A piece of data that lives in memory or on disk."""

    is_loaded: ClassVar[bool] = True
    """Whether the resource holds its data in memory (rather than, e.g., in a file)."""

    @abstractmethod
    def load(self) -> "Resource":
        """Return an in-memory version of this resource (itself when already in memory).

        Returns:
            A resource whose data is held in memory.
        """
