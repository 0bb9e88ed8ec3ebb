"""A server that does no work: the load generator's own ceiling on this machine.

Raw ASGI under the same uvicorn stack as ours (uvloop, httptools): it reads the whole
upload and answers a fixed small JSON, with no framework, no decode and no model. What it
sustains, and the CPU the client and it spend per request, is what HTTP alone costs on
these cores; ``bench.run`` adds that cost to the no-HTTP pipeline limit to get the most
any HTTP server could answer here with this client.

    python -m bench.peers.null_http --port 8001
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

ANSWER = b'{"predictions":[{"index":285,"label":"Egyptian cat","score":0.5}]}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the upload, as every real server must
        more = (await receive()).get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": ANSWER})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--variant", help="ignored (the harness passes every peer one)")
    p.add_argument("--weights-dir", help="ignored")
    args = p.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
