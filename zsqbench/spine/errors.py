"""Errors the CLI turns into one clear line and a non-zero exit (no traceback)."""


class UserError(Exception):
    """Bad input: the message says what was wrong and what to do."""


class Diverged(Exception):
    """A loss became NaN/Inf: the run stops and its record says where."""

    def __init__(self, phase: str, step: int, what: str = "loss"):
        super().__init__(f"{what} is not finite in phase {phase!r} at step {step}")
        self.phase, self.step, self.what = phase, step, what
