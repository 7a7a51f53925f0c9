"""A roomcast server where `typing` and `cursor` are ephemeral topics in every room, declared
through the Python API (`Node(ephemeral_topics=...)`).

Run as `python -m tests.integration.ephemeral_app serve [flags of roomcast serve]`.
"""

from __future__ import annotations

import sys

from roomcast import Roomcast
from roomcast.cli import build_parser
from roomcast.server import serve
from roomcast.settings import OPTIONS, Settings

EPHEMERAL = frozenset({"typing", "cursor"})


def main() -> None:
    args = build_parser().parse_args(sys.argv[1:])
    settings = Settings.from_sources({opt.name: getattr(args, opt.name) for opt in OPTIONS})
    rc = Roomcast(settings, demo=True)
    rc.node.ephemeral_topics = lambda room: EPHEMERAL
    serve(settings, rc)


if __name__ == "__main__":
    main()
