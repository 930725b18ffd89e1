"""The run's index.html and the comparison page open in a real headless browser (Debian's
chromium), every figure in them loads, and a screenshot is taken. Skipped, with the reason
printed, only where chromium is missing and cannot be installed."""

import os
import re
import shutil
import subprocess

import pytest

from pipeline.report.compare import compare_runs
from pipeline.report.html import page
from pipeline.report.stage_report import build_report

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found, "chromium is not installed and apt-get cannot run here (not root)"
    try:
        proc = subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, text=True, timeout=900,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if proc.returncode != 0:  # stale package lists: refresh once
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=600)
            proc = subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, text=True,
                                  timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"apt-get install chromium failed: {exc}"
    return shutil.which("chromium"), f"apt-get install -y chromium failed: {proc.stderr.strip()[-300:]}"


@pytest.fixture(scope="module")
def chromium():
    path, why = find_chromium()
    if path is None:
        print(f"SKIPPED browser test: {why}")
        pytest.skip(why)
    return path


def browse(chromium, profile, url, *extra):
    """Run headless chromium with a fresh profile; returns stdout (the DOM for --dump-dom)."""
    proc = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def check_images_load(chromium, tmp_path, html_path, expected_images):
    """The page's own script marks each <img> loaded or not after the load event; read the marks."""
    dom = browse(chromium, tmp_path / "profile-dom", html_path.resolve().as_uri(), "--dump-dom")
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:2000]
    assert f'data-images="{expected_images}"' in body.group(1) and 'data-broken="0"' in body.group(1), body.group(1)
    marks = re.findall(r'data-loaded="([01])"', dom)
    assert marks == ["1"] * expected_images


def test_run_report_opens_with_every_figure(chromium, run_copy, tmp_path):
    index = build_report(run_copy)
    images = index.read_text().count("<img ")
    assert images == 6  # scores dev and test, dev loss, sampling, gradient similarity, throughput
    check_images_load(chromium, tmp_path, index, images)
    shot = tmp_path / "index.png"
    browse(chromium, tmp_path / "profile-shot", index.resolve().as_uri(), f"--screenshot={shot}",
           "--window-size=1280,4000", "--hide-scrollbars")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 4000)


def test_comparison_page_opens_with_its_figure(chromium, seed_runs, tmp_path):
    out = compare_runs(seed_runs, tmp_path / "cmp")
    check_images_load(chromium, tmp_path, out, 1)


def test_a_broken_image_is_detected(chromium, tmp_path):
    """The check itself: a figure that cannot be decoded is reported as broken."""
    bad = tmp_path / "bad.html"
    bad.write_text(page("bad", "<img src='data:image/png;base64,AAAA' alt='x'><img src='missing.png' alt='y'>"))
    dom = browse(chromium, tmp_path / "profile-bad", bad.as_uri(), "--dump-dom")
    assert 'data-broken="2"' in dom and dom.count('data-loaded="0"') == 2
