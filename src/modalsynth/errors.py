"""The one exception type that the command line turns into a one-line message and exit status 2."""


class UserError(Exception):
    """A problem with the user's input (file, folder, option) that the user can fix; the message names the fix."""
