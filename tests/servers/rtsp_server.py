"""A real RTSP server on loopback for the tests: GStreamer's RTSP server streaming an H.264 MP4
file (demuxed, not re-encoded) at its frame rate. Run with a Python that has PyGObject and
GStreamer's RTSP server (Debian: python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-rtsp,
gstreamer1.0-plugins-good, gstreamer1.0-plugins-bad).

    python3 rtsp_server.py CLIP PORT       # serves rtsp://127.0.0.1:PORT/clip, prints "ready"
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    clip, port = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( filesrc location={clip} ! qtdemux ! h264parse config-interval=-1 "
                       f"! rtph264pay name=pay0 pt=96 )")
    factory.set_shared(True)
    server.get_mount_points().add_factory("/clip", factory)
    server.attach(None)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
