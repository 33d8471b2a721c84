#!/usr/bin/env python3
"""A TLS WebSocket front for the fake Event Hubs: AMQP over WebSockets, as Event Hubs serves it
on port 443, relayed to the fake's plain AMQP port. Standard library only.

The SDK (azure_core_amqp 1.2.0-beta.1 with fe2o3-amqp-ws) always connects with `wss://` to
`<custom endpoint host:port>/$servicebus/websocket/` and requires the WebSocket subprotocol
`amqp` in the answer (the AMQP WebSocket binding), so this endpoint serves TLS with the given
certificate, accepts that path only, answers `Sec-WebSocket-Protocol: amqp`, and relays binary
messages both ways without looking at them. Generic proxies such as websockify answer with
their own subprotocols (`binary`/`base64`) and cannot stand in.

Usage: wss_proxy.py --cert CHAIN.pem --key KEY.pem --target 127.0.0.1:PORT [--port 0]
Stdout: `LISTENING 127.0.0.1:<port>`. One thread pair per connection; a connection ends when
either side closes.
"""

import argparse
import base64
import hashlib
import socket
import ssl
import struct
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PATH = "/$servicebus/websocket/"


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def send_frame(sock, opcode, payload, lock):
    header = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        header += bytes([n])
    elif n < 65536:
        header += bytes([126]) + struct.pack("!H", n)
    else:
        header += bytes([127]) + struct.pack("!Q", n)
    with lock:
        sock.sendall(header + payload)


def handshake(conn):
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed during handshake")
        request += chunk
        if len(request) > 65536:
            raise ValueError("handshake too long")
    head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    protocols = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    if method != "GET" or path != PATH or "amqp" not in protocols:
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        raise ValueError(f"refused {method} {path} protocols={protocols}")
    key = headers["sec-websocket-key"].encode("ascii")
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode("ascii")
    conn.sendall(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: amqp\r\n\r\n"
        ).encode("ascii")
    )


def ws_to_tcp(ws, tcp, lock):
    try:
        while True:
            b0, b1 = read_exact(ws, 2)
            opcode = b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", read_exact(ws, 2))[0]
            elif n == 127:
                n = struct.unpack("!Q", read_exact(ws, 8))[0]
            mask = read_exact(ws, 4) if b1 & 0x80 else b"\0\0\0\0"
            data = read_exact(ws, n)
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
            if opcode in (0x0, 0x2):
                tcp.sendall(payload)
            elif opcode == 0x8:
                send_frame(ws, 0x8, payload[:2], lock)
                break
            elif opcode == 0x9:
                send_frame(ws, 0xA, payload, lock)
    except (OSError, ConnectionError, ValueError):
        pass
    finally:
        for s in (tcp, ws):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def tcp_to_ws(tcp, ws, lock):
    try:
        while True:
            data = tcp.recv(65536)
            if not data:
                break
            send_frame(ws, 0x2, data, lock)
    except (OSError, ConnectionError):
        pass
    finally:
        for s in (tcp, ws):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(conn, context, target):
    try:
        ws = context.wrap_socket(conn, server_side=True)
        handshake(ws)
        tcp = socket.create_connection(target)
    except (OSError, ValueError, KeyError, ConnectionError) as err:
        print(f"wss_proxy: {err}", file=sys.stderr, flush=True)
        conn.close()
        return
    lock = threading.Lock()
    threading.Thread(target=tcp_to_ws, args=(tcp, ws, lock), daemon=True).start()
    ws_to_tcp(ws, tcp, lock)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cert", required=True, help="PEM certificate chain (leaf first)")
    p.add_argument("--key", required=True, help="PEM private key")
    p.add_argument("--target", required=True, help="host:port of the plain AMQP endpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    host, _, port = args.target.rpartition(":")
    target = (host, int(port))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    listener = socket.create_server((args.host, args.port))
    print(f"LISTENING {args.host}:{listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, context, target), daemon=True).start()


if __name__ == "__main__":
    main()
