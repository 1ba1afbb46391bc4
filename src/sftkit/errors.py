"""The one exception type users see: a message that says what is wrong and where."""


class SftkitError(Exception):
    """A user-facing error (bad input, missing file, checksum mismatch, ...).

    The CLI prints its message without a traceback and exits with status 2. The message must
    name the file, record index and field at fault where there is one.
    """
