"""The one exception type for a user's mistake: it carries a message that says what and how to fix."""


class UserError(Exception):
    """A problem the user can fix. The CLI prints the message alone and exits with code 2."""

    exit_code = 2
