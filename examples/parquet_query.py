"""Detections written as Parquet from Python, then queried with DuckDB: detections per class and the
busiest seconds of a video.

Usage: python examples/parquet_query.py VIDEO OUTDIR
"""

import sys
from pathlib import Path

import duckdb

from vidpipe import Config, Detector
from vidpipe.engine import run
from vidpipe.sinks import open_sink

video, out = sys.argv[1], Path(sys.argv[2])
table = out / (Path(video).stem + ".parquet")
detector = Detector(Config(weights="random"))  # drop weights= for NVIDIA's COCO checkpoint
run(detector, video, lambda info: open_sink("parquet", table, info.path, info.width, info.height, detector.classes))

print(duckdb.sql(f"""
    SELECT class_name, count(*) AS detections, round(avg(score), 3) AS mean_score
    FROM '{table}' GROUP BY class_name ORDER BY detections DESC LIMIT 5
"""))
print(duckdb.sql(f"""
    SELECT floor(time) AS second, count(*) AS detections
    FROM '{table}' GROUP BY second ORDER BY detections DESC LIMIT 3
"""))
