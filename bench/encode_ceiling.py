"""libx264's rate on this machine's CPUs for a clip's frames (decoded into memory first): what bounds
``--save-video`` where the GPU has no NVENC.

    python bench/encode_ceiling.py camera1080.mp4 [frames]
"""

from __future__ import annotations

import sys
import time
from fractions import Fraction

import av


def main() -> None:
    path, limit = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 600
    with av.open(path) as c:
        frames = [f.reformat(format="yuv420p") for _, f in zip(range(limit), c.decode(video=0))]
    w, h = frames[0].width, frames[0].height
    for preset in ("veryfast", "ultrafast"):
        out = av.open(f"/tmp/encode-{preset}.mp4", "w")
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": preset, "crf": "23"}
        stream.codec_context.thread_count = 0
        t0, c0 = time.perf_counter(), time.process_time()
        for i, f in enumerate(frames):
            f.pts, f.time_base = i, Fraction(1, 30)  # the encoder's clock, not the decoder's
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
        out.close()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"libx264 {preset}, {w}x{h}, {len(frames)} frames: {len(frames) / wall:,.0f} frames/s, "
              f"{cpu / wall:.1f} cores busy")


if __name__ == "__main__":
    main()
