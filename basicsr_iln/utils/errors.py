"""One exception type for bad user input, and the CLI wrapper that turns it into one clear line."""
import difflib
import sys


class UserFacingError(Exception):
    """An error the CLIs report as one line (no traceback): the message says what to fix."""


class ConfigError(UserFacingError):
    """Bad input from the user (option file, data, checkpoint): the message names the culprit."""


def did_you_mean(word, choices, prefix=''):
    """A hint naming the choice closest to a misspelt ``word`` (written after ``prefix``), or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" Did you mean '{prefix}{close[0]}'?" if close else ''


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
