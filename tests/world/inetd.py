"""A one-port inetd for servers that cannot bind port 0 and tell which port they got (sshd,
git daemon): binds a free loopback port itself, prints "listening on tcp://127.0.0.1:PORT", and
runs COMMAND for every connection with the connection as its stdin and stdout (`sshd -i`,
`git daemon --inetd`). The port is held from the first line on, so no other process can take
it between a choice and a bind; and since each connection starts the server anew, a server whose
configuration file changed (sshd with a new host key) takes the change on the next connection
without giving the port up.

    inetd.py COMMAND...
"""

import socket
import subprocess
import sys


def main():
    command = sys.argv[1:]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(f"listening on tcp://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    children = []
    while True:
        connection, _ = listener.accept()
        with connection:
            children.append(subprocess.Popen(command, stdin=connection, stdout=connection))
        children = [child for child in children if child.poll() is None]


if __name__ == "__main__":
    main()
