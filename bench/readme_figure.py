"""The README's picture: one annotated frame of in.mp4 and a plot of per-frame counts.

    python bench/readme_figure.py ../shared/media/in.mp4 docs/

Runs ``vidpipe detect`` with ``--track``, a zone over the left half of the frame and
``--save-video``, then keeps frame ``--frame`` of the annotated video (``annotated.jpg``) and plots,
per frame, the detections and the objects inside the zone (``counts.png``). Random SSD300 weights
(no checkpoint download needed): the boxes show what vidpipe draws, not what a trained model sees.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("video")
    p.add_argument("out", type=Path)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--frame", type=int, default=120, help="the frame shown")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vidpipe-figure-"))
    width = av.open(a.video).streams.video[0].codec_context.width
    height = av.open(a.video).streams.video[0].codec_context.height
    zone = f"left:0,0,{width // 2},0,{width // 2},{height},0,{height}"
    subprocess.run([sys.executable, "-m", "vidpipe.cli", "detect", a.video, "-o", str(tmp / "out.jsonl"),
                    "--weights", "random", "--max-frames", str(a.frames), "--max-det", "6", "--track",
                    "--zone", zone, "--save-video", str(tmp)], check=True)
    with av.open(str(tmp / f"{Path(a.video).stem}.mp4")) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == a.frame:
                frame.to_image().save(a.out / "annotated.jpg", quality=90)
                break
    lines = [json.loads(x) for x in (tmp / "out.jsonl").read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(6, 2.4), dpi=100)
    ax.plot([x["frame"] for x in lines], [len(x["detections"]) for x in lines], label="detections")
    ax.plot([x["frame"] for x in lines], [sum(x["zones"]["left"].values()) for x in lines], label="in zone 'left'")
    ax.set_xlabel("frame")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out / "counts.png")


if __name__ == "__main__":
    main()
