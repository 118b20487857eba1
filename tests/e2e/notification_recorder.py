"""A stand-in desktop notification server: records every Notify call, one JSON line each.

    python3 notification_recorder.py OUTPUT     (DBUS_SESSION_BUS_ADDRESS set)

It owns org.freedesktop.Notifications on the session bus (PyGObject's Gio, run
with Debian's python3 and python3-gi), prints "ready" once it does, and serves
until killed. notify-send and gdbus talk to it exactly as to a real one.
"""

from __future__ import annotations

import json
import sys

from gi.repository import Gio, GLib  # type: ignore[import-not-found]

INTERFACE = """
<node><interface name="org.freedesktop.Notifications">
  <method name="Notify">
    <arg type="s" direction="in"/><arg type="u" direction="in"/>
    <arg type="s" direction="in"/><arg type="s" direction="in"/>
    <arg type="s" direction="in"/><arg type="as" direction="in"/>
    <arg type="a{sv}" direction="in"/><arg type="i" direction="in"/>
    <arg type="u" direction="out"/>
  </method>
  <method name="GetCapabilities"><arg type="as" direction="out"/></method>
  <method name="GetServerInformation">
    <arg type="s" direction="out"/><arg type="s" direction="out"/>
    <arg type="s" direction="out"/><arg type="s" direction="out"/>
  </method>
  <method name="CloseNotification"><arg type="u" direction="in"/></method>
</interface></node>
"""


def main(output: str) -> None:
    loop = GLib.MainLoop()
    counter = [0]

    def call(_connection, _sender, _path, _interface, method, parameters, invocation):  # type: ignore[no-untyped-def]
        if method == "Notify":
            app, _replaces, icon, summary, body = parameters.unpack()[:5]
            with open(output, "a", encoding="utf-8") as file:
                file.write(json.dumps({"app": app, "icon": icon, "summary": summary,
                                       "body": body}) + "\n")
            counter[0] += 1
            invocation.return_value(GLib.Variant("(u)", (counter[0],)))
        elif method == "GetCapabilities":
            invocation.return_value(GLib.Variant("(as)", (["body"],)))
        elif method == "GetServerInformation":
            invocation.return_value(GLib.Variant("(ssss)", ("recorder", "qsf", "1", "1.2")))
        else:
            invocation.return_value(None)

    def acquired(connection, _name):  # type: ignore[no-untyped-def]
        print("ready", flush=True)

    def bus_ready(connection, _name):  # type: ignore[no-untyped-def]
        info = Gio.DBusNodeInfo.new_for_xml(INTERFACE)
        connection.register_object("/org/freedesktop/Notifications", info.interfaces[0], call)

    Gio.bus_own_name(Gio.BusType.SESSION, "org.freedesktop.Notifications",
                     Gio.BusNameOwnerFlags.NONE, bus_ready, acquired, lambda *_: loop.quit())
    loop.run()


if __name__ == "__main__":
    main(sys.argv[1])
