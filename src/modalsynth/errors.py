"""The exceptions the command line turns into one line on stderr: `UserError` (exit 2) and `TrainingStopped`."""


class UserError(Exception):
    """A problem with the user's input (file, folder, option) that the user can fix; the message names the fix."""


class TrainingStopped(Exception):
    """Training ended early but cleanly (a signal, a diverged loss): one line for the user and the exit status to
    use."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
