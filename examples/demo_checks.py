"""What the example apps' scripts check as they run: each check is printed as it is made, and
the script's exit status says whether all held (so the one command is also a test)."""

from __future__ import annotations


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(f"  check: {what}: {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            self.failed.append(what)

    def exit_status(self) -> int:
        """Print the outcome; 0 when every check held, else 1."""
        print(f"\n{'all checks passed' if not self.failed else 'FAILED: ' + '; '.join(self.failed)}")
        return 1 if self.failed else 0
