"""A small module to try greentrack on: put the cursor at the end of a line and ask for a completion."""

import math
from dataclasses import dataclass


@dataclass
class Circle:
    radius: float

    def area(self) -> float:
        """The area of the circle."""
        return math.pi * self.radius ** 2

    def circumference(self) -> float:
        """The length of the circle's boundary."""
        return 


def total_area(circles: list[Circle]) -> float:
    """The sum of the areas of ``circles``."""
    return sum(
