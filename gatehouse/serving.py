"""The gunicorn worker the Procfile's `web` runs: gunicorn's sync worker, except that a
connection whose request was read whole is closed at once.

Since benoitc/gunicorn#3590 (in the 27.0.1 we pin) the sync worker ends every connection with
`util.close_graceful`: it half-closes, then waits in `recv` until the client closes its end
too (at most 2 s or 64 KB), so that unread request bytes in the kernel's buffer cannot make
the close send a TCP reset, which can cut the answer off before the client has read it
(RFC 9112, 9.6). That wait is right when bytes are left unread (a body the view did not
read, a pipelined request). When none are, a plain close sends no reset, and the wait only
keeps the worker, which serves one connection at a time, idle until the client gets round to
closing: a sender that holds its end open after a `Connection: close` answer held a worker
for the full 2 s. Under load the wait also lasts as long as the client waits for a core,
which made the slowest answers slower (docs/benchmarks.md, "A worker that closes at once").

So `close_promptly` looks, without blocking, whether anything is waiting unread: if so it
hands the socket to gunicorn's own graceful close; otherwise it closes at once.
"""

from __future__ import annotations

import socket

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

_close_graceful = util.close_graceful


def close_promptly(sock: socket.socket) -> None:
    """Close a finished connection; linger (gunicorn's way) only over unread bytes."""
    try:
        sock.setblocking(False)  # a peek, never a wait (a timeout would poll first)
        waiting = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        waiting = b""  # nothing sent beyond what was read
    except OSError:
        waiting = b""  # reset or gone already: nothing to protect
    except ValueError:
        waiting = b"?"  # a TLS socket takes no flags: gunicorn's way, unchanged
    if waiting:
        sock.setblocking(True)
        _close_graceful(sock)
        return
    # b"" from the peek is the client's own close: nothing unread either.
    try:
        sock.close()
    except OSError:
        pass


class PromptCloseWorker(SyncWorker):
    """gunicorn's sync worker with `close_promptly` as its connection close."""

    def init_process(self) -> None:
        # In the forked worker only, before its loop starts: the sync worker looks the
        # function up on `gunicorn.util` for every connection it ends.
        util.close_graceful = close_promptly
        super().init_process()


WORKER_CLASS = f"{__name__}.{PromptCloseWorker.__name__}"
# Web workers per host unless WEB_CONCURRENCY says otherwise: two, as measured best on a
# 2-core host that also runs the queue worker. On SQLite the web workers take turns at one
# write lock; on PostgreSQL a third one took the cores the queue worker needed
# (docs/benchmarks.md, "A worker that closes at once", 3). gunicorn.conf.py and the bench
# both read it.
WEB_WORKERS = 2
