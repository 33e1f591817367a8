"""Whether a TCP port answers: the one check before a tracking store or a Ray cluster is asked, since both
libraries retry a dead address for minutes."""

from __future__ import annotations

import socket


def port_answers(host: str, port: int, timeout: float) -> str | None:
    """None where something accepts a TCP connection at host:port within `timeout` seconds, else why not."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as exc:  # refused, timed out, no route, unknown host
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        return f"{host}:{port}: {reason}"
