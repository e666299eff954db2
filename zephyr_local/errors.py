"""The exceptions the library raises for bad input; the CLI turns them into one line."""


class ZephyrError(ValueError):
    """A problem the user can fix; the message says what and how.

    Attributes:
        exit_code: the process exit code the CLI uses for it.
    """

    exit_code = 1


class ModelNotFoundError(ZephyrError):
    """No model at the path or name given, and nothing cached for it."""

    exit_code = 2


class ModelFormatError(ZephyrError):
    """Model files exist but cannot be used (corrupt, unsupported, unsafe)."""

    exit_code = 2


class TemplateError(ZephyrError):
    """A conversation that the Zephyr chat template cannot render."""

    exit_code = 2


class ContextOverflowError(ZephyrError):
    """The newest message alone does not fit the context budget."""

    exit_code = 2


def describe_os_error(exc: OSError) -> str:
    """`path: cause` for an operating-system error (`cause` alone when it names no path)."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return ": ".join([*names, cause])


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]
