"""What a live run publishes beside its files, against the real things: events on a real MQTT broker
(mosquitto), Prometheus metrics scraped from the endpoint, and the live view in a real browser
(headless Chromium driven by Selenium). CI installs mosquitto and Chromium; without them these skip."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from moving_bar import bar_clip

HERE = Path(__file__).parent
COMMON = ["--device", "cpu", "--batch-size", "4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker():
    """A mosquitto broker on a free loopback port, for this test alone."""
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        pytest.skip("needs mosquitto (apt-get install mosquitto)")
    pytest.importorskip("paho.mqtt")
    port = free_port()
    proc = subprocess.Popen([exe, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)


class Subscriber:
    """Every message on ``topic`` (QoS 1), in arrival order."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def vidpipe(*args, timeout=300, wait=True):
    """``vidpipe detect`` with ``--model bar`` known (tests/moving_bar.py), in a fresh process."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        import moving_bar
        from vidpipe.cli import main
        sys.exit(main(["detect", *sys.argv[1:]]))
    """)
    argv = [sys.executable, "-c", script, *map(str, args), *COMMON]
    if not wait:
        return subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def crossings_in(jsonl: Path) -> list[tuple[int, str]]:
    """(frame, direction) of each crossing, from the JSON Lines output's running line counts."""
    out, before = [], {"in": 0, "out": 0}
    for line in jsonl.read_text().splitlines():
        x = json.loads(line)
        counts = {d: sum(x["lines"]["mid"][d].values()) for d in ("in", "out")}
        for d in ("in", "out"):
            out += [(x["frame"], d)] * (counts[d] - before[d])
        before = counts
    return out


def test_every_crossing_reaches_the_broker_once_and_in_order(broker, tmp_path):
    pytest.importorskip("trackers")
    clip = bar_clip(tmp_path / "cam.mp4")
    sub = Subscriber(broker, "site/#")
    r = vidpipe(clip, "-o", f"{tmp_path}/out/", "--model", "bar", "--realtime", "--loop", "--max-frames", "144",
                "--live-policy", "all", "--track", "--line", "mid:80,0,80,120", "--zone", "left:0,0,80,0,80,120,0,120",
                "--mqtt", f"mqtt://user:s3cr3t@127.0.0.1:{broker}/site")
    time.sleep(0.5)
    sub.close()
    assert r.returncode == 0, r.stderr
    expected = crossings_in(tmp_path / "out" / "cam.jsonl")
    got = [(m["frame"], m["direction"]) for t, m in sub.messages if t == "site/cam/crossing"]
    assert len(expected) == 3 and got == expected  # a crossing a pass of the bar, each once, in order
    crossing = next(m for t, m in sub.messages if t == "site/cam/crossing")
    assert crossing["line"] == "mid" and crossing["class_name"] == "bar" and crossing["track_id"] >= 0
    kinds = {t.split("/")[-1] for t, _ in sub.messages}
    assert {"crossing", "zones", "state", "status"} <= kinds
    zones = [m["zones"] for t, m in sub.messages if t == "site/cam/zones"]
    assert all(a != b for a, b in zip(zones, zones[1:]))  # published when they change, not every frame
    assert [m["state"] for t, m in sub.messages if t == "site/cam/state"][-1] == "ended"
    assert "s3cr3t" not in json.dumps(sub.messages) + r.stderr


def test_a_broker_that_is_down_stalls_nothing(tmp_path):
    pytest.importorskip("paho.mqtt")
    clip = bar_clip(tmp_path / "cam.mp4")
    started = time.time()
    r = vidpipe(clip, "-o", tmp_path / "o.jsonl", "--model", "bar", "--realtime", "--max-frames", "48",
                "--live-policy", "all", "--mqtt", f"mqtt://127.0.0.1:{free_port()}/site")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert len(lines) == 48 and max(json.loads(x)["latency_ms"] for x in lines) < 1000
    assert time.time() - started < 120  # the clip is 1.6 s; closing gives the broker at most 5 s more


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_metrics_move_while_a_camera_runs(tmp_path):
    pytest.importorskip("prometheus_client")
    clip = bar_clip(tmp_path / "cam.mp4")
    port = free_port()
    p = vidpipe(clip, "-o", f"{tmp_path}/out/", "--model", "bar", "--realtime", "--loop", "--max-frames", "600",
                "--metrics", str(port), wait=False)
    try:
        deadline, first = time.time() + 120, None
        while time.time() < deadline:
            try:
                first = _scrape(port)
                if first.get('vidpipe_frames_total{source="cam"}', 0) > 0:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        time.sleep(2.0)
        second = _scrape(port)
    finally:
        p.terminate()
        p.communicate(timeout=60)
    key = 'vidpipe_frames_total{source="cam"}'
    assert second[key] > first[key] > 0
    assert second['vidpipe_latency_seconds_count{source="cam"}'] > 0
    assert 'vidpipe_queue_depth{queue="decoded"}' in second and 'vidpipe_queue_depth{queue="results"}' in second


@pytest.fixture
def browser():
    selenium = pytest.importorskip("selenium")
    from selenium import webdriver

    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_exe = shutil.which("chromedriver")
    if chrome is None or driver_exe is None:
        pytest.skip("needs Chromium and its driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_exe), options=options)
    yield driver
    driver.quit()
    assert selenium


def test_the_live_view_in_a_browser(browser, tmp_path):
    """The page lists the camera, its picture changes, a camera added on the page with the token starts
    and shows its picture; without the token the page is refused; no credentials on the page."""
    from selenium.webdriver.common.by import By

    pytest.importorskip("flask")
    clip = bar_clip(tmp_path / "cam.mp4")
    other = tmp_path / "other.mp4"
    other.write_bytes(clip.read_bytes())
    listing = tmp_path / "cams.txt"
    listing.write_text(f"{clip}\n")
    port = free_port()
    p = vidpipe("--sources", listing, "-o", tmp_path / "out", "--model", "bar", "--realtime", "--loop",
                "--serve", str(port), wait=False)
    try:
        token = None
        deadline = time.time() + 120
        while token is None and time.time() < deadline:
            line = p.stderr.readline()
            if "token to add or remove cameras:" in line:
                token = line.rsplit(": ", 1)[1].strip(" )\n")
        assert token, "no token printed"
        browser.get(f"http://127.0.0.1:{port}/")

        def picture(name: str) -> str:
            imgs = browser.find_elements(By.CSS_SELECTOR, f'.camera[data-name="{name}"] img')
            return (imgs[0].get_attribute("src") or "") if imgs else ""

        def wait_for(check, what: str, timeout: float = 60) -> None:
            end = time.time() + timeout
            while not check():
                assert time.time() < end, f"timed out waiting for {what}: {browser.page_source[:500]}"
                time.sleep(0.3)

        wait_for(lambda: "frame=" in picture("cam"), "the camera's first picture")
        first = picture("cam")
        wait_for(lambda: picture("cam") != first, "its picture to change")
        assert browser.execute_script(
            "const i = document.querySelector('.camera[data-name=\"cam\"] img'); return i.complete && i.naturalWidth")
        browser.find_element(By.ID, "source").send_keys(str(other))
        browser.find_element(By.ID, "token").send_keys("wrong")
        browser.find_element(By.CSS_SELECTOR, "#add button").click()
        wait_for(lambda: "token" in browser.find_element(By.ID, "said").text, "the refusal")
        browser.find_element(By.ID, "token").clear()
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "#add button").click()
        wait_for(lambda: "frame=" in picture("other"), "the added camera's first picture")
        assert "other" in json.dumps(json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/cameras").read()))
    finally:
        p.terminate()
        p.communicate(timeout=60)


def test_the_events_example_prints_what_a_run_publishes(broker, tmp_path):
    pytest.importorskip("trackers")
    clip = bar_clip(tmp_path / "cam.mp4")
    example = subprocess.Popen([sys.executable, str(HERE.parent / "examples" / "events.py"),
                                f"mqtt://127.0.0.1:{broker}/site", "60"], stdout=subprocess.PIPE, text=True)
    assert example.stdout.readline().startswith("listening")
    r = vidpipe(clip, "-o", tmp_path / "o.jsonl", "--model", "bar", "--realtime", "--max-frames", "48",
                "--live-policy", "all", "--track", "--line", "mid:80,0,80,120", "--mqtt", f"mqtt://127.0.0.1:{broker}/site")
    assert r.returncode == 0, r.stderr
    time.sleep(1.0)
    example.terminate()
    said = example.communicate(timeout=30)[0]
    assert "bar #" in said and "crossed mid (in)" in said and "cam: ended" in said, said


def test_the_view_and_the_metrics_free_their_ports_when_closed():
    """A run's servers end with it: the next run (a benchmark's next count) listens on the same ports."""
    pytest.importorskip("flask")
    pytest.importorskip("prometheus_client")
    from vidpipe.metrics import Metrics
    from vidpipe.view import View

    view_port, metrics_port = free_port(), free_port()
    for _ in range(2):
        view = View("127.0.0.1", view_port, lambda: [{"name": "cam"}], lambda name: None)
        metrics = Metrics("127.0.0.1", metrics_port)
        assert json.loads(urllib.request.urlopen(f"http://127.0.0.1:{view_port}/api/cameras").read()) == [{"name": "cam"}]
        assert b"vidpipe_frames" in urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read()
        view.close()
        metrics.close()


def test_published_detections_are_the_json_lines_objects(broker, tmp_path):
    clip = bar_clip(tmp_path / "cam.mp4")
    sub = Subscriber(broker, "site/+/detections")
    r = vidpipe(clip, "-o", tmp_path / "o.jsonl", "--model", "bar", "--realtime", "--max-frames", "24",
                "--live-policy", "all", "--mqtt", f"mqtt://127.0.0.1:{broker}/site", "--mqtt-detections")
    time.sleep(0.5)
    sub.close()
    assert r.returncode == 0, r.stderr
    written = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [m for _, m in sub.messages] == written and len(written) == 24


def test_cameras_on_several_processes_publish_through_one_monitor(broker, tmp_path):
    """Two engine processes, a camera each: the parent's one monitor gets what both engines report, so the
    broker hears every camera's states and status, the metrics count every camera's frames and each
    process's queues, and the view has every camera's picture."""
    pytest.importorskip("prometheus_client")
    from vidpipe import Config
    from vidpipe.events import Broker, Events
    from vidpipe.inputs import source_name
    from vidpipe.livescale import run_live_processes, until_ended
    from vidpipe.metrics import Metrics
    from vidpipe.monitor import Monitor
    from vidpipe.scale import Assignment
    from vidpipe.synth import make_clip

    clips = [str(make_clip(tmp_path / f"cam{i}.mp4", frames=8, width=64, height=48, bframes=False, seed=i))
             for i in range(2)]
    sub = Subscriber(broker, "site/#")
    port = free_port()
    events, metrics = Events(Broker.parse(f"mqtt://127.0.0.1:{broker}/site")), Metrics("127.0.0.1", port)
    monitor = Monitor(source_name, events, metrics, previews=True)
    cfg = Config(device="cpu", weights="random", batch_size=2, realtime=True, max_frames=8, live_policy="all")
    sources, on_video = until_ended(clips)
    try:
        report = run_live_processes(cfg, sources, "jsonl", lambda p: tmp_path / f"{Path(p).stem}.jsonl",
                                    [Assignment("cpu", "", "cpu")], 2, on_video=on_video, monitor=monitor)
        scraped = _scrape(port)
    finally:
        metrics.close()
        events.close()
        time.sleep(0.5)
        sub.close()
    assert not report.failed and report.frames == 16, report
    for name in ("cam0", "cam1"):
        assert scraped[f'vidpipe_frames_total{{source="{name}"}}'] == 8
        assert monitor.jpeg(name) is not None
        states = [m["state"] for t, m in sub.messages if t == f"site/{name}/state"]
        assert states[-1] == "ended", states
        assert [m["frames"] for t, m in sub.messages if t == f"site/{name}/status"][-1] == 8
    assert {'vidpipe_queue_depth{queue="decoded (process 0)"}', 'vidpipe_queue_depth{queue="decoded (process 1)"}'
            } <= set(scraped)


@pytest.mark.parametrize("flag,value", [("--mqtt", "mqtt://127.0.0.1:1/site"), ("--metrics", "1"), ("--serve", "1")])
def test_reporting_a_file_run_over_processes_is_refused_in_one_line(tmp_path, flag, value):
    """Events, metrics and the view follow files in a one-process run (and live sources over any number):
    a file run over processes would publish nothing, so it is refused before any work."""
    from cli_run import detect, one_line_error
    from vidpipe.synth import make_clip

    clip = make_clip(tmp_path / "a.mp4", frames=4, width=64, height=48)
    r = detect(clip, "-o", tmp_path / "o.jsonl", flag, value, "--procs-per-device", "2", timeout=120)
    assert r.returncode == 2 and "drop --devices" in one_line_error(r, flag), r.stderr
    assert not (tmp_path / "o.jsonl").exists()
