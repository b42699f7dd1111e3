"""Exceptions → one-line messages and exit codes (0 ok, 1 gate failed, 2 bad input, 3 target).

Usage errors (unknown flag, missing argument) are typer's own and exit 2 as well.
"""

from __future__ import annotations

import errno
import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any

import typer

from edgesmith.toolchain.core.errors import CheckFailed, EdgesmithError, caused_by

INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug in edgesmith, not in the user's input
INTERRUPTED = 130  # 128 + SIGINT, as shells report it
INTERRUPTED_LINE = "edgesmith: interrupted; no partial output was left"
# what the machine refuses (a full disk, a read-only or forbidden folder): exit 2, one line
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
debug = {"on": False}  # set by the root --debug option


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgesmithError as e:
            if debug["on"]:
                traceback.print_exc()
            print(f"edgesmith: {_kind(e)}: {e}", file=sys.stderr)
            if isinstance(e, CheckFailed) and e.report is not None:
                print(f"edgesmith: report: {e.report}", file=sys.stderr)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            print(INTERRUPTED_LINE, file=sys.stderr)
            raise typer.Exit(INTERRUPTED) from None
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS:
                raise
            if debug["on"]:
                traceback.print_exc()
            where = f" ({e.filename})" if e.filename else ""
            print(f"edgesmith: error: {e.strerror}{where}; nothing was written", file=sys.stderr)
            raise typer.Exit(2) from None
        except Exception as e:
            if caused_by(e, (KeyboardInterrupt,)):  # Ctrl-C inside an import, raised anew
                print(INTERRUPTED_LINE, file=sys.stderr)
                raise typer.Exit(INTERRUPTED) from None
            traceback.print_exc()
            print(
                "edgesmith: internal error (a bug in edgesmith; please report it)", file=sys.stderr
            )
            raise typer.Exit(INTERNAL_ERROR) from None

    return wrapper


def _kind(e: EdgesmithError) -> str:
    return {1: "failed", 2: "error", 3: "target unavailable"}.get(e.exit_code, "error")
