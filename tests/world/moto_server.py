"""moto (Secrets Manager, EC2, IAM) on a loopback port it binds itself; prints "listening on
http://127.0.0.1:PORT" once it accepts connections. `moto_server -p PORT` takes its port from the
command line, which leaves a window between choosing a free port and binding it, in which another
server can take the port (and answer a readiness probe in moto's place).

    moto_server.py
"""

import os

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server


def main():
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler
    )
    # moto_server sets it too: some services build URLs with it.
    os.environ["MOTO_PORT"] = str(server.server_port)
    print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
