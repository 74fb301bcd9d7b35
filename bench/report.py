"""Summaries, the JSON file, the PNG chart and the markdown table of one benchmark run."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.link import LinkSettings
from bench.measure import Sample

METRICS = ("ttfr_s", "pull_s", "total_s", "bytes_fetched")


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median and spread; ``stdev`` is 0 for a single repetition."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def mode_result(samples: Sequence[Sample], errors: Sequence[str]) -> dict[str, Any]:
    if not samples:
        return {"status": "failed", "reason": errors[0] if errors else "no samples",
                "errors": list(errors)}
    return {
        "status": "ok",
        "samples": [s.to_json() for s in samples],
        "errors": list(errors),
        "summary": {m: summarize([float(getattr(s, m)) for s in samples]) for m in METRICS},
    }


def unavailable(reason: str) -> dict[str, Any]:
    return {"status": "unavailable", "reason": reason}


def machine() -> dict[str, Any]:
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "machine": platform.machine()}


def header(link: LinkSettings, reps: int) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "link": {"rate_bps": link.rate_bps, "rtt_ms": link.rtt_ms, "text": link.describe()},
        "reps": reps,
    }


def _fmt_s(s: dict[str, float]) -> str:
    return f"{s['median']:.2f} ({s['min']:.2f} to {s['max']:.2f})"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Time to first response, {result['date']}; {m['nproc']} CPUs, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}; link {result['link']['text']}; {result['reps']} cold reps "
        "(median (min to max), seconds).",
        "",
        "| image | mode | first response | pull | total | MB fetched |",
        "|---|---|---|---|---|---|",
    ]
    for name, img in result["images"].items():
        if "error" in img:
            lines.append(f"| {name} | — | unavailable: {img['error']} | | | |")
            continue
        for mode, r in img["modes"].items():
            if r["status"] != "ok":
                lines.append(f"| {name} | {mode} | {r['status']}: {_one_line(r['reason'])} "
                             "| | | |")
                continue
            s = r["summary"]
            lines.append(f"| {name} | {mode} | {_fmt_s(s['ttfr_s'])} | {_fmt_s(s['pull_s'])} | "
                         f"{_fmt_s(s['total_s'])} | {s['bytes_fetched']['median'] / 1e6:.1f} |")
    io_lines = _io_markdown(result)
    if io_lines:
        lines += ["", "| image | read path | cache | large file MB/s | walk+read s (files) |",
                  "|---|---|---|---|---|", *io_lines]
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "/")[:160]


def _io_markdown(result: dict[str, Any]) -> list[str]:
    out = []
    for name, img in result["images"].items():
        for path, r in (img.get("io") or {}).items():
            if "reason" in r:
                out.append(f"| {name} | {path} | — | unavailable: {_one_line(r['reason'])} | |")
                continue
            for cache in ("cold", "warm"):
                c = r[cache]
                out.append(f"| {name} | {path} | {cache} | {c['seq_mb_s']:.0f} | "
                           f"{c['walk_s']:.2f} ({c['walk_files']}) |")
    return out


def write_chart(result: dict[str, Any], path: Path) -> None:
    """Median time to first response per mode and image, whiskers at min and max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = list(result["images"])
    modes: list[str] = []  # in run order, only those with numbers: no gaps for n/a modes
    for img in result["images"].values():
        for m, r in img.get("modes", {}).items():
            if r["status"] == "ok" and m not in modes:
                modes.append(m)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.5 * len(images) + 4), 4.5))
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        xs, ys, lo, hi = [], [], [], []
        for i, name in enumerate(images):
            r = result["images"][name].get("modes", {}).get(mode)
            if not r or r["status"] != "ok":
                continue
            s = r["summary"]["ttfr_s"]
            xs.append(i + (j - (len(modes) - 1) / 2) * width)
            ys.append(s["median"])
            lo.append(s["median"] - s["min"])
            hi.append(s["max"] - s["median"])
        if xs:
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=mode)
    ax.set_xticks(range(len(images)), images)
    ax.set_ylabel("time to first response (s)")
    ax.set_title(f"snapfs vs containerd, link {result['link']['text']}")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(result: dict[str, Any], results_dir: Path, stem: str) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{stem}.json"
    png_path = results_dir / f"{stem}.png"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    write_chart(result, png_path)
    return json_path, png_path
