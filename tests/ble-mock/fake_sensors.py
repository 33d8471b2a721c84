#!/usr/bin/env python3
"""Fake BLE health devices for the BLE integration test.

Turns a running `python3 -m dbusmock --template bluez5` (which has no GATT) into three
peripherals, talking to the mock only over D-Bus (org.freedesktop.DBus.Mock API):

- a heart-rate strap C0:FF:EE:00:18:0D (service 0x180D, Heart Rate Measurement 0x2A37 notify,
  Body Sensor Location 0x2A38, Device Information 0x180A with a System ID);
- a blood-pressure cuff C0:FF:EE:00:18:10 (service 0x1810, Blood Pressure Measurement 0x2A35
  indicate, Current Time 0x2A2B read/write, Device Information);
- an unknown strap C0:FF:EF:00:00:01 advertising 0x180D that the ward config does not admit:
  a Connect() on it is a test failure (printed as "fake: UNEXPECTED connect").

Behaviour (arguments, all optional):
  --hr N            heart-rate notifications in all (bpm 60 + 7 i; even i uint8, odd i uint16)
  --hr-drop K       drop the strap's link after its K-th notification (once), then continue
                    from notification K after the reconnect
  --hr-fail F       the strap's first F Connect() calls fail (le-connection-abort-by-local)
  --hr-interval-ms  time between two heart-rate notifications (default 1000; the connector
                    merges readings of one device and type within the same second)
  --bp M            blood-pressure measurements, each with its own time stamp; the cuff
                    drops the link after sending all but the last one, and after the
                    reconnect sends its whole memory again (as cuffs do): the agent must
                    store each measurement once
Every line it prints starts with "fake:" and is flushed, so a harness can follow it.
Run with DBUS_SYSTEM_BUS_ADDRESS pointing at the private bus, after the mock is up.

Workarounds for the mock (see shared docs, testing-ble-serial-mqtt.md section 1.4): devices are
made with AddObject, not the template's AddDevice (whose Connect never sets the Connected
property, and which would be callable before a replacement is installed), method code uses
D-Bus typed values, EmitSignal gets explicit signatures, every GattService1 gets one dummy
method (dbusmock's introspection order otherwise breaks bluez-async's XML parser).
"""

import argparse
import sys

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

BASE = "-0000-1000-8000-00805f9b34fb"
MOCK = "org.freedesktop.DBus.Mock"
BLUEZ_MOCK = "org.bluez.Mock"
DEV = "org.bluez.Device1"
SVC = "org.bluez.GattService1"
CHR = "org.bluez.GattCharacteristic1"
DSC = "org.bluez.GattDescriptor1"
OM = "org.freedesktop.DBus.ObjectManager"


def uuid(short):
    return "0000%04x%s" % (short, BASE)


def say(*parts):
    print("fake:", *parts, flush=True)


def byte_array(values):
    return dbus.Array([dbus.Byte(v) for v in values], signature="y")


class Fake:
    def __init__(self, args):
        self.args = args
        self.bus = dbus.SystemBus()
        self.root = self.bus.get_object("org.bluez", "/")
        self.devices = {}  # path -> spec dict
        self.by_char = {}  # characteristic path -> (device path, kind)
        self.added = False

    # -- helpers ------------------------------------------------------------------------
    def mock(self, path):
        return dbus.Interface(self.bus.get_object("org.bluez", path), MOCK)

    def add_object(self, path, iface, props, methods):
        self.mock("/").AddObject(path, iface, props, methods)
        self.mock("/").EmitSignal(
            OM,
            "InterfacesAdded",
            "oa{sa{sv}}",
            [
                dbus.ObjectPath(path),
                dbus.Dictionary({iface: dbus.Dictionary(props, signature="sv")}, signature="sa{sv}"),
            ],
        )

    def update(self, path, iface, props):
        self.mock(path).UpdateProperties(iface, dbus.Dictionary(props, signature="sv"))

    # -- devices ------------------------------------------------------------------------
    def add_devices(self):
        if self.added:
            return False
        self.added = True
        specs = [
            {"address": "C0:FF:EE:00:18:0D", "name": "HRM-Bed12", "service": 0x180D, "kind": "hr",
             "fail": self.args.hr_fail},
            {"address": "C0:FF:EE:00:18:10", "name": "BPM-Bed12", "service": 0x1810, "kind": "bp",
             "fail": 0},
            {"address": "C0:FF:EF:00:00:01", "name": "HRM-Stranger", "service": 0x180D,
             "kind": "stranger", "fail": 0},
        ]
        for spec in specs:
            # The device object is made here rather than with the template's AddDevice, so
            # that it exists with the replaced Connect/Disconnect from its first moment (an
            # agent that admits it by address may call Connect at once), and with the
            # advertisement properties typed as BlueZ types them.
            path = "/org/bluez/hci0/dev_" + spec["address"].replace(":", "_")
            spec.update({"path": path, "gatt": False, "sent": 0, "connects": 0, "timer": None,
                         "dropped": False})
            self.devices[path] = spec
            connect = (
                "if not hasattr(self, 'fails_left'): self.fails_left = %d\n"
                "if self.fails_left > 0:\n"
                "    self.fails_left -= 1\n"
                "    raise dbus.exceptions.DBusException('le-connection-abort-by-local', name='org.bluez.Error.Failed')\n"
                "self.UpdateProperties('%s', {'Connected': dbus.Boolean(True)})\n" % (spec["fail"], DEV)
            )
            disconnect = (
                "self.UpdateProperties('%s', {'Connected': dbus.Boolean(False), "
                "'ServicesResolved': dbus.Boolean(False)})\n" % DEV
            )
            props = {
                "Address": dbus.String(spec["address"]),
                "AddressType": dbus.String("public"),
                "Name": dbus.String(spec["name"]),
                "Alias": dbus.String(spec["name"]),
                "Adapter": dbus.ObjectPath("/org/bluez/hci0"),
                "UUIDs": dbus.Array([uuid(spec["service"])], signature="s"),
                "Paired": dbus.Boolean(False),
                "Connected": dbus.Boolean(False),
                "ServicesResolved": dbus.Boolean(False),
                "Trusted": dbus.Boolean(False),
                "Blocked": dbus.Boolean(False),
                "LegacyPairing": dbus.Boolean(False),
                "RSSI": dbus.Int16(-52),
                "ManufacturerData": dbus.Dictionary(
                    {dbus.UInt16(0x0059): dbus.Array([dbus.Byte(0x12), dbus.Byte(0x34)], signature="y")},
                    signature="qv"),
                "ServiceData": dbus.Dictionary({}, signature="sv"),
            }
            self.add_object(path, DEV, props, [
                ("Connect", "", "", connect),
                ("Disconnect", "", "", disconnect),
                ("Pair", "", "", ""),
                ("CancelPairing", "", "", ""),
            ])
            say("device", spec["address"], spec["name"], str(path))
        return False

    def read_method(self):
        return ("ReadValue", "a{sv}", "ay", "ret = self.props['%s']['Value']" % CHR)

    def char(self, service_path, handle, short, flags, value, methods):
        path = "%s/char%04x" % (service_path, handle)
        props = {
            "UUID": uuid(short),
            "Service": dbus.ObjectPath(service_path),
            "Value": byte_array(value),
            "Notifying": dbus.Boolean(False),
            "Flags": dbus.Array(flags, signature="s"),
            "Handle": dbus.UInt16(handle),
            "MTU": dbus.UInt16(185),
        }
        self.add_object(path, CHR, props, methods)
        return path

    def service(self, device_path, handle, short):
        path = "%s/service%04x" % (device_path, handle)
        props = {
            "UUID": uuid(short),
            "Primary": dbus.Boolean(True),
            "Device": dbus.ObjectPath(device_path),
            "Includes": dbus.Array([], signature="o"),
            "Handle": dbus.UInt16(handle),
        }
        # One dummy method: without it dbusmock lists the interface after the child nodes.
        self.add_object(path, SVC, props, [("MockNoop", "", "", "")])
        return path

    def notify_methods(self):
        return [
            ("StartNotify", "", "", "self.UpdateProperties('%s', {'Notifying': dbus.Boolean(True)})" % CHR),
            ("StopNotify", "", "", "self.UpdateProperties('%s', {'Notifying': dbus.Boolean(False)})" % CHR),
        ]

    def device_information(self, dev, handle, serial, system_id):
        svc = self.service(dev["path"], handle, 0x180A)
        items = [
            (0x2A29, b"Acme Medical"),
            (0x2A24, ("%s-1" % dev["kind"].upper()).encode()),
            (0x2A25, serial.encode()),
            (0x2A26, b"1.2.3\x00"),
            (0x2A23, system_id),
        ]
        for i, (short, value) in enumerate(items):
            self.char(svc, handle + 1 + 2 * i, short, ["read"], list(value), [self.read_method()])

    def export_gatt(self, dev):
        path = dev["path"]
        if dev["kind"] == "hr":
            svc = self.service(path, 0x0C, 0x180D)
            c = self.char(svc, 0x0D, 0x2A37, ["notify"], [], self.notify_methods())
            self.add_object(c + "/desc000f", DSC, {
                "UUID": uuid(0x2902), "Characteristic": dbus.ObjectPath(c), "Value": byte_array([]),
            }, [])
            self.by_char[c] = (path, "hr")
            self.char(svc, 0x10, 0x2A38, ["read"], [0x01], [self.read_method()])
            # System ID as sent (least significant octet first).
            self.device_information(dev, 0x20, "HR-0001", [0x0D, 0x18, 0x00, 0xFE, 0xFF, 0xEE, 0xFF, 0xC0])
        elif dev["kind"] == "bp":
            svc = self.service(path, 0x0C, 0x1810)
            c = self.char(svc, 0x0D, 0x2A35, ["indicate"], [], self.notify_methods())
            self.by_char[c] = (path, "bp")
            cts = self.service(path, 0x30, 0x1805)
            write = ("WriteValue", "aya{sv}", "",
                     "self.UpdateProperties('%s', {'Value': dbus.Array(args[0], signature='y')})" % CHR)
            self.char(cts, 0x31, 0x2A2B, ["read", "write"], [0xE8, 0x07, 1, 1, 0, 0, 0, 1, 0, 0],
                      [self.read_method(), write])
            self.device_information(dev, 0x20, "BP-0001", [0x10, 0x18, 0x00, 0xFE, 0xFF, 0xEE, 0xFF, 0xC0])
        dev["gatt"] = True

    # -- values -------------------------------------------------------------------------
    def hr_value(self, i):
        bpm = 60 + 7 * i
        return [0x00, bpm] if i % 2 == 0 else [0x01, bpm & 0xFF, bpm >> 8]

    def bp_value(self, i):
        # mmHg, time stamp, pulse: 120+i / 80 / MAP 93, 2024-03-15 08:(30+i):00, pulse 72.
        return [0x1E, 120 + i, 0x00, 0x50, 0x00, 0x5D, 0x00, 0xE8, 0x07, 0x03, 0x0F, 0x08, 30 + i,
                0x00, 0x48, 0x00, 0x01, 0x00, 0x00]

    def drop_link(self, dev, why):
        say("dropping link", dev["address"], why)
        self.update(dev["path"], DEV, {"Connected": dbus.Boolean(False),
                                       "ServicesResolved": dbus.Boolean(False)})

    def tick(self, char_path):
        dev_path, kind = self.by_char[char_path]
        dev = self.devices[dev_path]
        if dev["timer"] is None:
            return False
        if kind == "hr":
            if dev["sent"] >= self.args.hr:
                dev["timer"] = None
                return False
            value = self.hr_value(dev["sent"])
            self.update(char_path, CHR, {"Value": byte_array(value)})
            dev["sent"] += 1
            say("hr notification", dev["sent"], bytes(value).hex())
            if self.args.hr_drop and dev["sent"] == self.args.hr_drop and not dev["dropped"]:
                dev["dropped"] = True
                dev["timer"] = None
                self.drop_link(dev, "after notification %d" % dev["sent"])
                return False
            return True
        # Blood pressure: this connection's queue of stored measurements.
        if not dev["queue"]:
            dev["timer"] = None
            if not dev["dropped"] and self.args.bp > 1:
                dev["dropped"] = True
                self.drop_link(dev, "after its first upload")
            return False
        i = dev["queue"].pop(0)
        value = self.bp_value(i)
        self.update(char_path, CHR, {"Value": byte_array(value)})
        say("bp indication", i, bytes(value).hex())
        return True

    # -- signal dispatch ------------------------------------------------------------------
    def on_properties_changed(self, iface, changed, _invalidated, path=None):
        if iface == "org.bluez.Adapter1" and changed.get("Discovering"):
            GLib.timeout_add(100, self.add_devices)
        elif iface == DEV and path in self.devices and "Connected" in changed:
            dev = self.devices[path]
            if changed["Connected"]:
                dev["connects"] += 1
                if dev["kind"] == "stranger":
                    say("UNEXPECTED connect", dev["address"])
                say("connected", dev["address"], "connect", dev["connects"])
                GLib.timeout_add(100, self.resolve, path)
            else:
                dev["timer"] = None
                for c, (d, _k) in self.by_char.items():
                    if d == path:
                        self.update(c, CHR, {"Notifying": dbus.Boolean(False)})
                say("link down", dev["address"])
        elif iface == CHR and path in self.by_char and changed.get("Notifying"):
            dev = self.devices[self.by_char[path][0]]
            if dev["timer"] is None:
                if dev["kind"] == "bp":
                    last = self.args.bp - 1
                    dev["queue"] = list(range(last)) if not dev["dropped"] else list(range(self.args.bp))
                period = self.args.hr_interval_ms if dev["kind"] == "hr" else 200
                dev["timer"] = GLib.timeout_add(period, self.tick, path)
                say("notifying", dev["address"])

    def resolve(self, path):
        dev = self.devices[path]
        if not dev["gatt"]:
            self.export_gatt(dev)
        self.update(path, DEV, {"ServicesResolved": dbus.Boolean(True)})
        return False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hr", type=int, default=6)
    p.add_argument("--hr-drop", type=int, default=0)
    p.add_argument("--hr-fail", type=int, default=0)
    p.add_argument("--hr-interval-ms", type=int, default=1000)
    p.add_argument("--bp", type=int, default=0)
    p.add_argument("--timeout", type=int, default=120)
    args = p.parse_args()
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.SystemBus()
    for _ in range(200):
        if bus.name_has_owner("org.bluez"):
            break
        GLib.usleep(50_000)
    else:
        say("org.bluez never appeared")
        return 1
    fake = Fake(args)
    bus.add_signal_receiver(
        fake.on_properties_changed,
        dbus_interface="org.freedesktop.DBus.Properties",
        signal_name="PropertiesChanged",
        bus_name="org.bluez",
        path_keyword="path",
    )
    dbus.Interface(fake.root, BLUEZ_MOCK).AddAdapter("hci0", "ward-gateway")
    say("adapter hci0")
    loop = GLib.MainLoop()
    GLib.timeout_add_seconds(args.timeout, loop.quit)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
