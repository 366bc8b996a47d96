"""One unary gRPC call as raw HTTP/2 frames (the `h2` library), for what grpc's own clients
refuse to send: header values with control bytes, and request bytes that are no message.

Blocking (a socket with a timeout): run it with `asyncio.to_thread`.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class RawAnswer:
    """What came back: headers, trailers (name, value bytes), the body, and how it ended."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    reset: bool = False

    @property
    def grpc_status(self) -> str:
        return dict(self.headers).get(b"grpc-status", b"").decode()

    def text(self) -> str:
        """Everything in the answer, bytes kept one to one (latin-1)."""
        shown = b"\n".join(name + b": " + value for name, value in self.headers)
        return (shown + b"\n" + self.body).decode("latin-1")


def unary(
    port: int,
    path: str,
    message: bytes,
    metadata: list[tuple[bytes, bytes]],
    timeout: float = 10.0,
) -> RawAnswer:
    """POST one length-prefixed `message` to `path` on 127.0.0.1:`port` with `metadata`
    sent as is (no validation, no normalisation); the answer once the stream ends."""
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config)
    answer = RawAnswer()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", f"127.0.0.1:{port}".encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *metadata,
        ]
        conn.send_headers(stream, headers)
        conn.send_data(stream, b"\x00" + struct.pack(">I", len(message)) + message, end_stream=True)
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                return answer
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    answer.headers += [(bytes(k), bytes(v)) for k, v in event.headers]
                elif isinstance(event, h2.events.DataReceived):
                    answer.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    answer.reset = True
                    return answer
                elif isinstance(event, h2.events.StreamEnded):
                    sock.sendall(conn.data_to_send())
                    return answer
            sock.sendall(conn.data_to_send())
