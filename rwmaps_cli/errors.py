"""Exceptions shared by the rwmaps modules."""


class InputError(Exception):
    """A user-facing problem with one input file.

    The message is a single line and does not contain the file path: the caller
    prefixes it (``f"{path}: {err}"``), so the same error reads well in a terminal
    and in the manifest.
    """


class UsageError(Exception):
    """A mistake in how the command was called, found before any work (exit code 2)."""


class UnknownLabelsError(ValueError):
    """Labels hold values that are neither in the class list nor the ignore label."""


class PreprocessedError(ValueError):
    """nnU-Net preprocessed data rwmaps cannot use: a folder without plans or cases, an
    output folder inside it.  One line that names the folder or file, because no caller
    prefixes it (unlike :class:`InputError`); a seg file that cannot be read raises
    ``rwmaps_cli.formats.nnunet.SegError``, which is both."""
