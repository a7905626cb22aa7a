"""One exception type for bad user input, so the CLI can print it as a one-line error."""


class TaskvecError(ValueError):
    """Bad input named in one line: unknown name, mismatched vectors, corrupt file, bad config."""


def finite(value: float, what: str) -> float:
    """`value` as a float, or a TaskvecError naming `what` when it is not a finite number (an α of
    nan or inf would silently make every output NaN)."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TaskvecError(f"{what} must be a finite number, got {value!r}")
    return float(value)
