"""The cohort's progress: cases done of all, failed, rate and ETA on stderr. A tqdm bar on a terminal (tqdm is in
the ``train`` extra); one plain line per case otherwise (logs, batch jobs, or no tqdm)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, done: int, failed: int, label: str = "cohort"):
        self.total, self.done, self.failed, self.label = total, done, failed, label
        self.start, self.first = time.perf_counter(), done
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, initial=done, desc=label, unit="case", dynamic_ncols=True)
                self.bar.set_postfix(failed=failed)

    def step(self, failed: bool) -> None:
        """One more case finished (``failed``: with an error)."""
        self.done += 1
        self.failed += failed
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update()
            return
        elapsed = time.perf_counter() - self.start
        rate = (self.done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
        print(f"{self.label}: {self.done}/{self.total} cases, {self.failed} failed, {60 * rate:.1f} cases/min, "
              f"ETA {eta_text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
