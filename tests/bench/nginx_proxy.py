"""nginx as the proxy, for comparison: what a hop through a reverse proxy written in C
costs on this machine.

``tests.bench.run`` measures it in a column of its own, beside the floor (a
minimal Python pass-through): one nginx worker (one process, as each entry
point has one worker), keep-alive connections on both sides, nothing
buffered (``proxy_buffering off``: each piece of a stream is relayed as the
upstream read brings it, as the proxy does). What nginx adds to direct is what
the hop itself costs here (system calls, wake-ups, the loopback), which no
proxy in any language avoids; what the floor adds beyond nginx is Python's.

    python -m tests.bench.nginx_proxy --upstream http://127.0.0.1:8000 --port 9000

It takes the flags every target is given (``--base-url``, ``--host``,
``--port``; ``--type`` and ``--log-level`` are ignored), writes its
configuration under the temporary directory (one per port, written again at
each start) and becomes nginx (``exec``: the bench measures nginx's own CPU
and memory). SIGTERM stops it. Needs nginx (``apt-get install nginx-light``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from tests.interop.servers import nginx_binary

__all__ = ["config", "main"]

#: Requests a keep-alive connection may carry (nginx's default, 1,000, would
#: close wrk's connections, and its upstream ones, every 1,000 requests).
_REQUESTS = 1_000_000_000


def config(upstream: str, host: str, port: int, prefix: Path) -> str:
    """nginx's configuration: listen on ``host:port``, relay to ``upstream``
    (``http://host:port``), temporary files under ``prefix``."""
    parts = urlsplit(upstream)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"--upstream must be http://HOST:PORT, not {upstream!r}")
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    origin = f"[{parts.hostname}]:{parts.port}" if ":" in parts.hostname else parts.netloc
    temp = " ".join(
        f"{name}_temp_path {prefix / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {prefix / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 30000; }}
http {{
    access_log off;
    {temp}
    keepalive_requests {_REQUESTS};
    keepalive_timeout 75s;
    upstream up {{
        server {origin};
        keepalive 1024;
        keepalive_requests {_REQUESTS};
    }}
    server {{
        listen {listen} backlog=2048;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.nginx_proxy", description=__doc__)
    parser.add_argument("--upstream", "--base-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    # what the bench gives every target, of no use here
    parser.add_argument("--type", help=argparse.SUPPRESS)
    parser.add_argument("--log-level", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    nginx = nginx_binary()
    if nginx is None:
        parser.error("nginx is not installed (apt-get install nginx-light)")
    prefix = Path(tempfile.gettempdir()) / f"sansproxy-bench-nginx-{opts.port}"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(config(opts.upstream, opts.host, opts.port, prefix))
    os.execv(nginx, [nginx, "-p", str(prefix), "-c", str(conf)])


if __name__ == "__main__":
    main()
