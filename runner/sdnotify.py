"""The systemd notification protocol (sd_notify(3)) without libsystemd.

Under ``Type=notify`` systemd passes a Unix datagram socket in ``NOTIFY_SOCKET``; the
daemon sends it newline-separated ``KEY=VALUE`` assignments: ``READY=1`` once it serves,
``WATCHDOG=1`` more often than ``WATCHDOG_USEC``, ``STOPPING=1`` when it starts to shut
down, ``STATUS=...`` for ``systemctl status``. Outside systemd every call is a no-op.

Every function takes ``environ`` and reads ``os.environ`` only when it is omitted, at
call time. This is the one exception to "config is read once" (STYLE.md rule 7), and on
purpose: these variables are not settings an operator chooses but the service manager's
per-process hand-over, like argv; reading them late, when a message is due, is what
sd_notify(3) itself does, and the parameter lets tests pass their own.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` to systemd. True if it was sent; False when there is no
    notification socket (not run by systemd) or sending failed (logged: a watchdog
    that cannot be fed is worth a warning, but not worth stopping the daemon)."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        # A Linux abstract socket: its name starts with a NUL byte instead of "@".
        target = b"\0" + os.fsencode(address[1:])
    elif address.startswith("/"):
        target = os.fsencode(address)
    else:
        # systemd 254+ may also hand out vsock:... addresses (for virtual machines);
        # this daemon does not run there.
        log.warning("sdnotify.unsupported_socket", extra={"notify_socket": address})
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), target)
    except OSError as exc:
        log.warning("sdnotify.send_failed", extra={"notify_socket": address, "error": str(exc)})
        return False
    return True


def ready(environ: Mapping[str, str] | None = None) -> bool:
    """The daemon is serving: systemd finishes ``systemctl start`` and starts ordering."""
    return notify("READY=1", environ)


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    """Graceful shutdown has begun (the stop timeout now runs)."""
    return notify("STOPPING=1", environ)


def watchdog(environ: Mapping[str, str] | None = None) -> bool:
    """Proof of life for ``WatchdogSec=``."""
    return notify("WATCHDOG=1", environ)


def status(text: str, environ: Mapping[str, str] | None = None) -> bool:
    """A one-line status for ``systemctl status``."""
    # A newline would start a new assignment, so the text could set other keys.
    return notify("STATUS=" + " ".join(text.splitlines()), environ)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` messages, or None when no watchdog is armed.

    Half the timeout, as sd_watchdog_enabled(3) recommends, so that one late tick does
    not get the daemon killed. ``WATCHDOG_PID`` naming another process means the
    watchdog is not ours (the variable was inherited from a parent).
    """
    env = os.environ if environ is None else environ
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000
