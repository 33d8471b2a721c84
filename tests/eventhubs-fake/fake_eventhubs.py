#!/usr/bin/env python3
"""A local, plaintext AMQP 1.0 endpoint that behaves as Azure Event Hubs does for a producer.

Built for the agent's Event Hubs forwarder tests (agent/tests/it/eventhubs.rs); the Rust SDK
(azure_messaging_eventhubs 0.16) is pointed at it with
`with_custom_endpoint("amqp://127.0.0.1:<port>")` and any syntactically valid connection string.
What Event Hubs does that a generic broker does not, and this fake does (see
shared/docs/eventhubs-cross-systemd.md 1.4 and 1.7):

* SASL ANONYMOUS; link source/target addresses echoed back whatever they are (full URLs such as
  `amqps://ns.servicebus.windows.net/hub/Partitions/1`, `$cbs`, `rust_amqp_cbs`);
* CBS: a put-token request on `$cbs` is accepted and answered with status-code 202 on the
  client's reply link (the sender link, active on both ends, whose remote target is the
  request's reply-to), correlated by message id;
* `max-message-size` advertised on every attach (the SDK's create_batch needs it);
* batch envelopes (message-format 0x80013700: each `data` section is one encoded AMQP message)
  are unpacked, and the partition key is read from the `x-opt-partition-key` annotation;
* a detach that does not close the link is answered with a detach.

Output: stdout's first line is `LISTENING <host>:<port>`, then, if --control-port is given,
`CONTROL <host>:<port>`. Every accepted event is recorded as one JSON object per line (to
--log, or stdout when --log is `-`): kind "event" with target, partition_key, batch (whether
it came out of an envelope), index (position in its delivery), delivery (1-based count of
event deliveries), connection, message_id, content_type, application_properties,
message_annotations, body_size, body_b64 and body_text (when the body is UTF-8). Other lines:
kind "cbs" (put-token: name, type, token), "settled" (a delivery settled with another outcome
than accepted), "die", "stall", "connection".

Knobs (CLI flags, or POST /knobs with a JSON object of the same names with underscores):
reject events larger than N bytes (whole delivery rejected with
amqp:link:message-size-exceeded, as Event Hubs rejects a batch), reject/modify/release events
that carry an application property, a default outcome for every delivery, die at the N-th
event delivery without settling it (drop the connection without an AMQP close, or exit the
process), stall at the N-th event delivery (stop settling and crediting), and stay down
(refuse connections) for a while after dying. Control HTTP endpoints: GET /stats; POST /stall,
/unstall, /drop (drop every connection now), /down (drop all and stop listening), /up,
/knobs.

Invariants: only deliveries on links whose target is not `$cbs` count as event deliveries; an
event is recorded only when its delivery is settled as accepted; a batch delivery is settled as
one unit (a rejected event rejects the whole batch, as in Event Hubs).
"""

import argparse
import base64
import http.server
import json
import os
import queue
import socket
import sys
import threading
import time
import uuid

from proton import Condition, Data, Delivery, Endpoint, Handler, Message, int32
from proton.reactor import Container

BATCH_SECTION_CODES = range(0x70, 0x79)  # header .. footer section descriptors
DATA_SECTION = 0x75


def parse_kv(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return (key, value)


def jsonable(value):
    """Turns a decoded AMQP value into something json.dumps accepts, keeping strings and ints."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):  # also proton's symbol and char
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"binary_b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def split_sections(encoded):
    """Splits an encoded AMQP message into (descriptor, value) sections.

    Binary values are copied to bytes at once: proton returns memoryviews over a buffer it
    reuses, and a late copy comes out corrupted.
    """
    data = Data()
    offset = 0
    sections = []
    while offset < len(encoded):
        data.clear()
        used = data.decode(encoded[offset:])
        if used <= 0:
            break
        offset += used
        data.rewind()
        while data.next():
            if data.type() != Data.DESCRIBED:
                sections.append((None, None))
                continue
            data.enter()
            data.next()
            descriptor = data.get_object()
            data.next()
            value = data.get_object()
            if isinstance(value, memoryview):
                value = bytes(value)
            data.exit()
            sections.append((int(descriptor) if isinstance(descriptor, int) else descriptor, value))
    return sections


def is_batch_envelope(sections):
    data_sections = [v for d, v in sections if d == DATA_SECTION]
    if len(data_sections) > 1:
        return True
    if len(data_sections) == 1:
        first = data_sections[0]
        return (
            isinstance(first, bytes)
            and len(first) >= 3
            and first[0] == 0x00
            and first[1] == 0x53
            and first[2] in BATCH_SECTION_CODES
        )
    return False


def decode_event(encoded):
    message = Message()
    message.decode(encoded)
    body = message.body
    if isinstance(body, memoryview):
        body = bytes(body)
    return message, body


class Knobs:
    """Failure-injection settings; changed from the control thread, read by the reactor."""

    def __init__(self, args):
        self.max_message_size = args.max_message_size
        self.reject_larger_than = args.reject_larger_than
        self.reject_property = list(args.reject_property)
        self.reject_condition = args.reject_condition
        self.modify_property = list(args.modify_property)
        self.release_property = list(args.release_property)
        self.outcome = args.outcome
        self.outcome_first = args.outcome_first
        self.die_at = args.die_at
        self.die_mode = args.die_mode
        self.down_after_die = args.down_after_die
        self.stall_at = args.stall_at
        self.stall_for = args.stall_for

    def update(self, changes):
        unknown = [key for key in changes if not hasattr(self, key)]
        if unknown:
            raise KeyError(", ".join(unknown))
        for key, value in changes.items():
            if key.endswith("_property"):
                value = [tuple(parse_kv(v)) if isinstance(v, str) else tuple(v) for v in value]
            setattr(self, key, value)


class FakeEventHubs(Handler):
    def __init__(self, args, out):
        super().__init__()
        self.args = args
        self.out = out
        self.knobs = Knobs(args)
        self.commands = queue.Queue()
        self.acceptor = None
        self.port = args.port
        self.connections = {}  # id -> Connection
        self.next_connection = 0
        self.event_deliveries = 0
        self.events = 0
        self.cbs_tokens = 0
        self.stalled = False
        self.held = []  # (delivery, link, encoded) left unsettled while stalled
        self.down = False
        self.died = False
        self.stall_started = False
        self.container = None

    # ---- output --------------------------------------------------------------------------
    def record(self, obj):
        self.out.write(json.dumps(obj, sort_keys=True) + "\n")
        self.out.flush()

    # ---- lifecycle -----------------------------------------------------------------------
    def on_reactor_init(self, event):
        self.container = event.container
        self.listen()
        host, port = self.acceptor._selectable.getsockname()[:2]
        self.port = port
        print(f"LISTENING {host}:{port}", flush=True)
        if self.args.control_port is not None:
            server = ControlServer((self.args.host, self.args.control_port), self)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            chost, cport = server.server_address[:2]
            print(f"CONTROL {chost}:{cport}", flush=True)
        self.container.schedule(0.02, self)

    def listen(self):
        self.acceptor = self.container.listen(f"{self.args.host}:{self.port}")
        self.down = False

    def on_timer_task(self, event):
        while True:
            try:
                command, payload, reply = self.commands.get_nowait()
            except queue.Empty:
                break
            result = self.run_command(command, payload)
            reply.put(result)
        self.container.schedule(0.02, self)

    def run_command(self, command, payload):
        if command == "stall":
            self.stalled = True
            self.record({"kind": "stall", "on": True})
        elif command == "unstall":
            self.unstall()
        elif command == "drop":
            self.drop_all()
        elif command == "down":
            self.go_down(None)
        elif command == "up":
            if self.down:
                self.listen()
        elif command == "knobs":
            try:
                self.knobs.update(payload)
            except (KeyError, ValueError, argparse.ArgumentTypeError) as err:
                return {"error": f"bad knob: {err}"}
        return self.stats()

    def stats(self):
        return {
            "connections": self.next_connection,
            "open_connections": len(self.connections),
            "event_deliveries": self.event_deliveries,
            "events": self.events,
            "cbs": self.cbs_tokens,
            "stalled": self.stalled,
            "held": len(self.held),
            "down": self.down,
        }

    # ---- connections -----------------------------------------------------------------------
    def on_connection_bound(self, event):
        sasl = event.transport.sasl()
        sasl.allowed_mechs("ANONYMOUS")
        self.next_connection += 1
        event.connection._fake_id = self.next_connection
        self.connections[self.next_connection] = event.connection
        self.record({"kind": "connection", "event": "open", "connection": self.next_connection})

    def on_connection_remote_open(self, event):
        if event.connection.state & Endpoint.LOCAL_UNINIT:
            event.connection.open()

    def on_session_remote_open(self, event):
        if event.session.state & Endpoint.LOCAL_UNINIT:
            event.session.open()

    def on_link_remote_open(self, event):
        link = event.link
        if link.state & Endpoint.LOCAL_UNINIT:
            link.source.copy(link.remote_source)
            link.target.copy(link.remote_target)
            if link.is_receiver:
                link.max_message_size = self.knobs.max_message_size
            link.open()
            if link.is_receiver and not self.stalled:
                link.flow(self.args.credit)

    def on_link_remote_detach(self, event):
        if event.link.state & Endpoint.LOCAL_ACTIVE:
            event.link.detach()

    def on_link_remote_close(self, event):
        if event.link.state & Endpoint.LOCAL_ACTIVE:
            event.link.close()

    def on_session_remote_close(self, event):
        if event.session.state & Endpoint.LOCAL_ACTIVE:
            event.session.close()

    def on_connection_remote_close(self, event):
        if event.connection.state & Endpoint.LOCAL_ACTIVE:
            event.connection.close()

    def on_transport_closed(self, event):
        conn = event.connection
        cid = getattr(conn, "_fake_id", None) if conn is not None else None
        if cid is not None and cid in self.connections:
            del self.connections[cid]
            self.record({"kind": "connection", "event": "closed", "connection": cid})
        self.held = [h for h in self.held if getattr(h[1].connection, "_fake_id", None) != cid]

    def drop_connection(self, conn):
        """Closes the socket under an AMQP connection without an AMQP close frame."""
        transport = conn.transport
        if transport is None:
            return
        selectable = getattr(transport, "_selectable", None)
        transport.close_head()
        transport.close_tail()
        if selectable is not None:
            try:
                selectable.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            selectable.terminate()
            selectable.update()

    def drop_all(self):
        for conn in list(self.connections.values()):
            self.drop_connection(conn)

    def go_down(self, seconds):
        self.drop_all()
        if self.acceptor is not None and not self.down:
            self.acceptor.close()
            self.down = True
            self.record({"kind": "down", "seconds": seconds})
        if seconds:
            self.container.schedule(seconds, ComeBack(self))

    def unstall(self):
        self.stalled = False
        self.record({"kind": "stall", "on": False})
        held, self.held = self.held, []
        for delivery, link, encoded in held:
            self.process_event_delivery(delivery, link, encoded)
        for conn in self.connections.values():
            link = conn.link_head(Endpoint.LOCAL_ACTIVE)
            while link is not None:
                if link.is_receiver and link.credit < self.args.credit:
                    link.flow(self.args.credit - link.credit)
                link = link.next(Endpoint.LOCAL_ACTIVE)

    # ---- deliveries ------------------------------------------------------------------------
    def on_delivery(self, event):
        delivery = event.delivery
        link = event.link
        if link.is_sender:
            if delivery.updated and not delivery.settled:
                delivery.settle()
            return
        if delivery.aborted:
            delivery.settle()
            return
        if delivery.partial:
            return
        encoded = link.recv(delivery.pending) or b""
        link.advance()
        address = link.remote_target.address or ""
        if address == "$cbs" or address.endswith("/$cbs"):
            self.handle_cbs(delivery, link, encoded)
            return
        self.event_deliveries += 1
        number = self.event_deliveries
        if self.knobs.die_at and number == self.knobs.die_at and not self.died:
            self.died = True
            self.record({"kind": "die", "delivery": number, "mode": self.knobs.die_mode})
            if self.knobs.die_mode == "exit":
                self.out.flush()
                os._exit(3)
            if self.knobs.down_after_die:
                self.go_down(self.knobs.down_after_die)
            else:
                self.drop_connection(link.connection)
            return
        if self.knobs.stall_at and number >= self.knobs.stall_at and not self.stalled:
            if not self.stall_started:
                self.stall_started = True
                self.stalled = True
                self.record({"kind": "stall", "on": True, "delivery": number})
                if self.knobs.stall_for:
                    self.container.schedule(self.knobs.stall_for, Unstall(self))
        if self.stalled:
            delivery._fake_number = number
            self.held.append((delivery, link, encoded))
            return
        delivery._fake_number = number
        self.process_event_delivery(delivery, link, encoded)

    def process_event_delivery(self, delivery, link, encoded):
        number = getattr(delivery, "_fake_number", self.event_deliveries)
        target = link.remote_target.address
        sections = split_sections(encoded)
        batch = is_batch_envelope(sections)
        if batch:
            payloads = [v for d, v in sections if d == DATA_SECTION]
        else:
            payloads = [encoded]
        events = []
        for index, payload in enumerate(payloads):
            message, body = decode_event(payload)
            events.append((index, message, body, len(payload)))
        outcome, condition = self.decide(number, events)
        if outcome == "accept":
            for index, message, body, _size in events:
                self.events += 1
                self.record(self.event_record(number, link, target, batch, index, message, body))
            delivery.update(Delivery.ACCEPTED)
        else:
            if outcome == "reject":
                if condition:
                    delivery.local.condition = Condition(condition, f"fake_eventhubs: {condition}")
                delivery.update(Delivery.REJECTED)
            elif outcome == "modify":
                delivery.local.failed = True
                delivery.update(Delivery.MODIFIED)
            elif outcome == "release":
                delivery.update(Delivery.RELEASED)
            self.record({
                "kind": "settled",
                "delivery": number,
                "outcome": outcome,
                "condition": condition,
                "events": len(events),
                "target": target,
            })
        delivery.settle()
        if not self.stalled and link.credit < self.args.credit // 2:
            link.flow(self.args.credit - link.credit)

    def decide(self, number, events):
        knobs = self.knobs
        for _index, message, body, _size in events:
            props = message.properties or {}
            size = len(body) if isinstance(body, (bytes, str)) else 0
            if knobs.reject_larger_than is not None and size > knobs.reject_larger_than:
                return "reject", "amqp:link:message-size-exceeded"
            if self.matches(props, knobs.reject_property):
                return "reject", knobs.reject_condition or None
            if self.matches(props, knobs.modify_property):
                return "modify", None
            if self.matches(props, knobs.release_property):
                return "release", None
        if knobs.outcome != "accept" and (knobs.outcome_first is None or number <= knobs.outcome_first):
            condition = knobs.reject_condition if knobs.outcome == "reject" else None
            return knobs.outcome, (condition or None)
        return "accept", None

    @staticmethod
    def matches(props, rules):
        for key, value in rules:
            if key in props and str(props[key]) == value:
                return True
        return False

    def event_record(self, number, link, target, batch, index, message, body):
        annotations = message.annotations or {}
        partition_key = annotations.get("x-opt-partition-key")
        record = {
            "kind": "event",
            "delivery": number,
            "connection": getattr(link.connection, "_fake_id", None),
            "target": target,
            "batch": batch,
            "index": index,
            "partition_key": None if partition_key is None else str(partition_key),
            "message_id": jsonable(message.id),
            "content_type": None if message.content_type is None else str(message.content_type),
            "application_properties": jsonable(message.properties or {}),
            "message_annotations": jsonable(annotations),
        }
        if isinstance(body, bytes):
            record["body_size"] = len(body)
            record["body_b64"] = base64.b64encode(body).decode("ascii")
            try:
                record["body_text"] = body.decode("utf-8")
            except UnicodeDecodeError:
                record["body_text"] = None
        else:
            text = None if body is None else json.dumps(jsonable(body))
            record["body_size"] = 0 if text is None else len(text)
            record["body_b64"] = None
            record["body_text"] = text
        return record

    # ---- CBS -------------------------------------------------------------------------------
    def handle_cbs(self, delivery, link, encoded):
        message = Message()
        message.decode(encoded)
        props = message.properties or {}
        self.cbs_tokens += 1
        self.record({
            "kind": "cbs",
            "operation": jsonable(props.get("operation")),
            "name": jsonable(props.get("name")),
            "type": jsonable(props.get("type")),
            "token": jsonable(message.body),
        })
        delivery.update(Delivery.ACCEPTED)
        delivery.settle()
        link.flow(1)
        reply_link = self.find_reply_link(link.connection, message.reply_to)
        if reply_link is None:
            self.record({"kind": "cbs_unanswered", "reply_to": jsonable(message.reply_to)})
            return
        reply = Message(
            correlation_id=message.id,
            properties={"status-code": int32(202), "status-description": "Accepted"},
        )
        reply_link.send(reply)

    @staticmethod
    def find_reply_link(connection, reply_to):
        active = Endpoint.LOCAL_ACTIVE | Endpoint.REMOTE_ACTIVE
        link = connection.link_head(active)
        while link is not None:
            if link.is_sender and link.remote_target.address == reply_to:
                return link
            link = link.next(active)
        return None


class ComeBack(Handler):
    def __init__(self, fake):
        super().__init__()
        self.fake = fake

    def on_timer_task(self, event):
        if self.fake.down:
            self.fake.listen()
            self.fake.record({"kind": "up"})


class Unstall(Handler):
    def __init__(self, fake):
        super().__init__()
        self.fake = fake

    def on_timer_task(self, event):
        if self.fake.stalled:
            self.fake.unstall()


class ControlServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, fake):
        self.fake = fake
        super().__init__(address, ControlHandler)


class ControlHandler(http.server.BaseHTTPRequestHandler):
    COMMANDS = {"/stall", "/unstall", "/drop", "/down", "/up", "/knobs", "/stats"}

    def log_message(self, fmt, *args):  # keep stderr quiet
        return

    def do_GET(self):
        if self.path != "/stats":
            return self.reply(404, {"error": "unknown path"})
        self.run_command("stats", None)

    def do_POST(self):
        if self.path not in self.COMMANDS:
            return self.reply(404, {"error": "unknown path"})
        length = int(self.headers.get("Content-Length") or 0)
        payload = None
        if length:
            try:
                payload = json.loads(self.rfile.read(length))
            except ValueError:
                return self.reply(400, {"error": "body is not JSON"})
        if self.path == "/knobs" and not isinstance(payload, dict):
            return self.reply(400, {"error": "POST /knobs wants a JSON object"})
        self.run_command(self.path.lstrip("/"), payload)

    def run_command(self, name, payload):
        reply = queue.Queue()
        self.server.fake.commands.put((name, payload, reply))
        try:
            result = reply.get(timeout=5)
        except queue.Empty:
            return self.reply(503, {"error": "reactor did not answer"})
        self.reply(400 if "error" in result else 200, result)

    def reply(self, status, obj):
        body = (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Control API (with --control-port): GET /stats; POST /stall, /unstall, /drop, "
               "/down, /up; POST /knobs with a JSON object of knob names (e.g. "
               '{"outcome": "reject", "reject_larger_than": 1000}). Stdout: LISTENING '
               "host:port, then CONTROL host:port. Records: see the module docstring.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    p.add_argument("--control-port", type=int, default=None,
                   help="serve the control HTTP API on this port (0: any free port)")
    p.add_argument("--log", default="-", help="JSON-lines record file, '-' for stdout (default)")
    p.add_argument("--credit", type=int, default=100, help="link credit granted to senders")
    p.add_argument("--max-message-size", type=int, default=1024 * 1024,
                   help="max-message-size advertised on attach (default 1 MiB)")
    p.add_argument("--reject-larger-than", type=int, default=None, metavar="N",
                   help="reject a delivery holding an event whose body exceeds N bytes "
                        "(amqp:link:message-size-exceeded)")
    p.add_argument("--reject-property", type=parse_kv, action="append", default=[], metavar="K=V",
                   help="reject a delivery holding an event with application property K=V")
    p.add_argument("--reject-condition", default="amqp:not-allowed",
                   help="error condition for --reject-property and --outcome reject "
                        "('' for a rejection without a described error)")
    p.add_argument("--modify-property", type=parse_kv, action="append", default=[], metavar="K=V",
                   help="settle a delivery holding an event with K=V as modified")
    p.add_argument("--release-property", type=parse_kv, action="append", default=[], metavar="K=V",
                   help="settle a delivery holding an event with K=V as released")
    p.add_argument("--outcome", choices=["accept", "reject", "modify", "release"], default="accept",
                   help="outcome for every event delivery not matched by a rule above")
    p.add_argument("--outcome-first", type=int, default=None, metavar="N",
                   help="apply --outcome only to the first N event deliveries, accept later ones")
    p.add_argument("--die-at", type=int, default=None, metavar="N",
                   help="on the N-th event delivery, leave it unsettled and die (once)")
    p.add_argument("--die-mode", choices=["drop", "exit"], default="drop",
                   help="drop: close that connection's socket without an AMQP close and keep "
                        "listening; exit: exit the process with status 3")
    p.add_argument("--down-after-die", type=float, default=None, metavar="SECONDS",
                   help="after dying in drop mode, refuse connections for SECONDS")
    p.add_argument("--stall-at", type=int, default=None, metavar="N",
                   help="from the N-th event delivery on, stop settling and crediting")
    p.add_argument("--stall-for", type=float, default=None, metavar="SECONDS",
                   help="end a stall after SECONDS (held deliveries are then processed)")
    args = p.parse_args(argv)
    out = sys.stdout if args.log == "-" else open(args.log, "a", encoding="utf-8")
    fake = FakeEventHubs(args, out)
    container = Container(fake)
    container.container_id = "fake-eventhubs"
    try:
        container.run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
