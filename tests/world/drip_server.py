"""A hostile git remote that answers a byte at a time: each connection gets the start of one
maximal pkt-line ("fff0", 65520 bytes announced) and then one byte every --every seconds, so
every read returns quickly while the answer never completes. Over --http the bytes come as the
body of a 200 answer with git's advertisement content type. Bounded: each connection closes
after --for seconds.

    drip_server.py [--http] [--every 0.2] [--for 60]

Prints "listening on URL" (tcp:// or http://) once it accepts connections.
"""

import argparse
import socket
import threading
import time


def drip(connection, args):
    with connection:
        connection.settimeout(args.seconds)
        try:
            connection.recv(65536)
            if args.http:
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\n"
                    b"Content-Type: application/x-git-upload-pack-advertisement\r\n"
                    b"Connection: close\r\n\r\n"
                )
            connection.sendall(b"fff0")
            ends = time.monotonic() + args.seconds
            while time.monotonic() < ends:
                connection.sendall(b"a")
                time.sleep(args.every)
        except OSError:
            pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--every", type=float, default=0.2)
    parser.add_argument("--for", dest="seconds", type=float, default=60)
    args = parser.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    scheme = "http" if args.http else "tcp"
    print(f"listening on {scheme}://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=drip, args=(connection, args), daemon=True).start()


if __name__ == "__main__":
    main()
