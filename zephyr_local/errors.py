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
