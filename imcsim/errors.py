"""Exceptions that the CLI turns into one-line messages and exit code 2."""


class InputError(Exception):
    """Bad user input: the message names the file or the field at fault."""
