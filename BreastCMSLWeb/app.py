"""``breastcmsl-web``: serve BreastCMSL in the browser.

``breastcmsl-web --data DIR --models DIR [--host 127.0.0.1] [--port 8080] [--device auto] [--token T]``.
It binds 127.0.0.1 unless told otherwise; any other host requires a token (the given one, or one generated
and printed once with the address).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from .front import Settings, serve

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="breastcmsl-web", description="BreastCMSL in the browser: pick a case, "
                                     "analyze, show and compare the COAM, CAM and fine maps. Research software, not "
                                     "for diagnosis.")
    parser.add_argument("--data", required=True, type=Path, help="folder of case folders and DICOM study folders")
    parser.add_argument("--models", required=True, type=Path, help="folder of .safetensors model files")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (other than 127.0.0.1 needs a token)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (0: a free one, printed)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] for the analyses")
    parser.add_argument("--token", help="token required in the URL (?token=); generated when --host is not local")
    parser.add_argument("--max-tabs", type=int, default=4, help="tabs served at once (each holds a scene and a worker)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for flag, folder in (("--data", args.data), ("--models", args.models)):
        if not folder.is_dir():
            print(f"breastcmsl-web: {flag} {folder}: no such folder", file=sys.stderr)
            sys.exit(2)
    token = args.token or (None if args.host in LOCAL_HOSTS else secrets.token_urlsafe(16))
    settings = Settings(args.data.resolve(), args.models.resolve(), args.device, token, args.max_tabs)
    serve(settings, args.host, args.port)


if __name__ == "__main__":
    main()
