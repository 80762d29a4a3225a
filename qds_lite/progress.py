"""The progress bar of long runs (tqdm on stderr: rate and ETA), silent when stderr is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable


class Progress:
    """``start(total)`` opens the bar and returns the per-item callback; ``close()`` ends it."""

    def __init__(self, quiet: bool = False) -> None:
        self.enabled = not quiet and sys.stderr.isatty()
        self.bar = None
        self.failed = 0

    def start(self, total: int) -> Callable[[object], None]:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="photo", file=sys.stderr, dynamic_ncols=True, smoothing=0.05)
        return self.advance

    def advance(self, item: object) -> None:
        if self.bar is None:
            return
        if getattr(item, "error", None) is not None:
            self.failed += 1
            self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(1)

    def say(self, line: str) -> None:
        """One line on stderr, above the bar when there is one (so the bar is not broken up)."""
        (self.bar.write if self.bar is not None else print)(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
