"""One exception type for bad user input, so the CLI can print it as a one-line error."""


class TaskvecError(ValueError):
    """Bad input named in one line: unknown name, mismatched vectors, corrupt file, bad config."""
