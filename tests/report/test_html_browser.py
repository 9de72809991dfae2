"""The HTML report opened in headless Chromium: it renders offline, its SVG charts are in the DOM and on screen.

Skipped only where no Chromium is installed (``apt-get install chromium``; CI installs it).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from tests.report.report_fixture import ALICE, build_db

from greentrack.report.command import run_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered RGB(A) rows of an 8-bit PNG (enough to look at its pixels, no Pillow)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 4
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def _pixels(rows: list[bytes], width: int, channels: int) -> set[tuple[int, int, int]]:
    seen: set[tuple[int, int, int]] = set()
    for r in rows:
        for x in range(0, width * channels, channels):
            seen.add((r[x], r[x + 1], r[x + 2]))
    return seen


def test_html_report_renders_its_charts(tmp_path: Path) -> None:
    db = build_db(tmp_path / "g.db")
    html = tmp_path / "report.html"
    assert run_report([db], week="2026-W47", developer=ALICE, all_developers=False, fmt="html", out=html,
                      tz="Europe/Berlin", carbon_intensity=400.0) == 0
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", html.as_uri()],  # type: ignore[list-item]
                         capture_output=True, text=True, timeout=120, check=True).stdout
    for element in ('<svg id="chart-days-0"', '<svg id="chart-models-0"', '<svg id="chart-methods-0"'):
        assert element in dom
    assert dom.count('<rect class="bar-decode"') == 1 and dom.count('<rect class="bar-prefill"') == 3
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=1000,1400",  # type: ignore[list-item]
                    f"--screenshot={shot}", html.as_uri()], capture_output=True, timeout=120, check=True)
    data = shot.read_bytes()
    width, height, rows = decode_png(data)
    assert (width, height) == (1000, 1400) and len(data) > 20_000
    channels = len(rows[0]) // width
    colors = _pixels(rows, width, channels)
    assert len(colors) > 50  # text, tables and charts, not a blank page
    for name, rgb in {"decode bars": (0x2F, 0x8F, 0x46), "prefill bars": (0x8C, 0xC7, 0x9A),
                      "model bars": (0x4F, 0x7F, 0xB8), "attributed share": (0xE0, 0xA0, 0x30)}.items():
        assert rgb in colors, f"{name} not drawn"
