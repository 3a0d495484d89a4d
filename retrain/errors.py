"""The one exception type that reaches the user as a one-line message."""


class UserError(Exception):
  """Bad input (flag, file, folder or model) that the user can fix.

  The message is one line saying what is wrong and what to do. The command
  line prints it on stderr, without a traceback, and exits with status 2.
  """
