"""One browser tab's process: its own MRML scene (trame-slicer), session, views and page.

Started by the front server (:mod:`.front`) as ``python -m BreastCMSLWeb.tab`` with its configuration as one
JSON line on stdin (``data``, ``models``, ``device``, ``secret``, ``case``, ``idle_exit_s``); it binds
127.0.0.1 on a free port, prints ``READY <port>`` and exits ``idle_exit_s`` after its tab disconnects. The
websocket needs ``secret`` (wslink's auth key), which only the front knows.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    config = json.loads(sys.stdin.readline())
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # offscreen, no X
    from trame.app import get_server
    from trame_slicer import module as trame_slicer_module
    from trame_slicer.core import SlicerApp

    from BreastCMSLLib.panel.session import Session

    from .catalog import Catalog
    from .controller import TabController
    from .page import build_page
    from .views import create_views

    server = get_server(client_type="vue3")
    server.cli.set_defaults(authKey=config["secret"])
    server.enable_module(trame_slicer_module)
    app = SlicerApp()
    session = Session(app.scene, model_dir=config["models"])
    views = create_views(server, app)
    controller = TabController(server, views, session, Catalog(Path(config["data"]), Path(config["models"])),
                               config["device"])
    build_page(server, views, controller.typed.name)
    controller.data.case_name = config.get("case", "")  # loaded by its change listener once the server is ready
    server.controller.on_server_ready.add(lambda **_: print(f"READY {server.port}", flush=True))
    try:
        server.start(port=0, host="127.0.0.1", open_browser=False, show_connection_info=False,
                     timeout=config["idle_exit_s"])
    finally:
        session.close()


if __name__ == "__main__":
    main()
