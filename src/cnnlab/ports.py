"""Whether a TCP port answers: the one check before a tracking store or a Ray cluster is asked, since both
libraries retry a dead address for minutes; and whether what answers speaks gRPC (Ray's servers do)."""

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


def speaks_grpc(host: str, port: int, timeout: float) -> bool:
    """Whether a gRPC (HTTP/2) server answers at host:port within `timeout` seconds: a plain channel becomes
    ready only after the server's HTTP/2 handshake. Another server on that port (a web server, a database)
    left Ray retrying for about 5 minutes; this tells within `timeout` (measured: a silent socket, an HTTP/1.1
    server and one that sends a banner each 2.0 s at a 2 s timeout, a Ray head 0.24 s; 2-core Zen 5 EPYC)."""
    import grpc  # installed with Ray, the only caller

    # no HTTP proxy, as Ray's own channels (http_proxy set: the proxy answered, or not, for the server)
    with grpc.insecure_channel(f"{host}:{port}", options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            return True
        except grpc.FutureTimeoutError:
            return False
