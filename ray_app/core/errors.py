"""The one base class for errors a user can fix; entrypoints print them as one line."""


class RayAppError(Exception):
    """Bad input or configuration: the message names the value and the fix."""
