"""One rule for every command: a mistake in the input ends in one line on stderr, exit code 2.

Commands check what they are given before any work and raise :class:`UsageError`; the
library's own input checks raise ``ValueError`` (or a missing, existing or unwritable file), so
those count as the user's mistake too. Anything else is a bug: one line pointing at ``--debug``,
which lets every exception through with its traceback.
"""

from __future__ import annotations

import click
from typer.core import TyperGroup

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)
USAGE_EXIT, BUG_EXIT = 2, 1


class UsageError(ValueError):
    """Input a command refuses before it starts working; the message says what is accepted."""


def _fail(message: str, code: int) -> None:
    click.echo(" ".join(f"error: {message}".split()), err=True)
    raise click.exceptions.Exit(code)


def _usage(e: click.ClickException) -> None:
    ctx = getattr(e, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    _fail(e.format_message() + hint, USAGE_EXIT)


class RootGroup(TyperGroup):
    """The top-level group: every command runs inside its `invoke`, so errors meet here."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except (click.exceptions.Exit, click.exceptions.NoArgsIsHelpError):
            raise
        except click.ClickException as e:  # a mistake in the options before the command name
            _usage(e)

    def invoke(self, ctx: click.Context):
        debug = ctx.params.get("debug", False)
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.exceptions.NoArgsIsHelpError):
            raise
        except click.ClickException as e:
            if debug:
                raise
            _usage(e)
        except USER_ERRORS as e:
            if debug:
                raise
            _fail(str(e) or type(e).__name__, USAGE_EXIT)
        except Exception as e:
            if debug:
                raise
            _fail(
                f"internal error {type(e).__name__}: {e} (run `privlearn --debug ...` for the "
                "traceback, and please report it)",
                BUG_EXIT,
            )
