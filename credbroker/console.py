"""The ``credbroker`` console script's entry point.

It quiets gRPC core's own logging before anything imports grpc (its C core writes to file
descriptor 2 directly, which would break the one-line failure messages and JSON logs; set
``GRPC_VERBOSITY`` yourself to see them), and says in one line when only the SDK is installed.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        from credbroker.cli import main as cli_main
    except ModuleNotFoundError as exc:  # the SDK alone: `pip install credbroker`
        print(
            f"credbroker: the server is not installed (no module {exc.name!r}); "
            "install it with: pip install 'credbroker[server]'",
            file=sys.stderr,
        )
        return 2
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
