"""What the GPU counters (``nvml.NvmlCounter``, ``amd.AmdSmiCounter``) share: power integration, close, describe.

Flow: each vendor module opens its library and handles, then reads its energy counter per GPU; a GPU without a
usable counter has its power reading integrated here (trapezoids between the sampler's reads). ``close`` marks the
counter closed once, under the lock that guards the reads, then calls the vendor's ``_shutdown``.
"""

from __future__ import annotations

import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence

from greentrack.energy.counter import Counter


class GpuCounter(Counter):
    """A counter summed over some GPUs, read under ``_lock``; ``_closed`` once closed. Units: J, W, s.

    Subclasses call ``_init_gpu_state`` before reading, implement ``_shutdown`` (release the vendor library;
    must not raise) and, for GPUs without a counter, add ``_integrate_power(i, power_w)`` to their reads.
    """

    gpu_ids: Sequence[int | str]
    caveats: list[str]

    def _init_gpu_state(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False

    def _start_power_integration(self, gpu_count: int) -> None:
        """Reset the power integration state of ``gpu_count`` GPUs (used only for GPUs without the counter)."""
        self._power_last: list[tuple[float, float] | None] = [None] * gpu_count
        self._integrated_j: list[float] = [0.0] * gpu_count

    def _integrate_power(self, i: int, power_w: float) -> float:
        """GPU ``i``'s energy so far: trapezoids of its power readings (W) between reads. Units: J."""
        now_s = self._clock()
        last = self._power_last[i]
        if last is not None:
            last_s, last_w = last
            self._integrated_j[i] += 0.5 * (last_w + power_w) * (now_s - last_s)
        self._power_last[i] = (now_s, power_w)
        return self._integrated_j[i]

    @abstractmethod
    def _shutdown(self) -> None:
        """Release the vendor library; never raises."""

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._shutdown()

    def describe(self) -> dict[str, object]:
        out = super().describe()
        out["gpu_ids"] = list(self.gpu_ids)
        out["caveats"] = [*self.caveats, "whole-device energy: other processes on these GPUs are counted too"]
        return out
