"""One exception type for bad user input, and the CLI wrapper that turns it into one clear line."""
import sys


class UserFacingError(Exception):
    """An error the CLIs report as one line (no traceback): the message says what to fix."""


class ConfigError(UserFacingError):
    """Bad input from the user (option file, data, checkpoint): the message names the culprit."""


class NonFiniteTrainingError(UserFacingError):
    """Training diverged: too many consecutive non-finite steps (iteration and loss are named)."""


def run_cli(main, argv=None):
    """Run ``main(argv)``; print user errors as one ``error:`` line and exit 2 (``--traceback`` re-raises)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return main(argv)
    except (UserFacingError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        if '--traceback' in argv:
            raise
        message = str(err).replace('\n', ' ')
        print(f'error: {message}', file=sys.stderr)
        sys.exit(2)
