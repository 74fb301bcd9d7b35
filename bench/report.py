"""Summaries, the JSON file, the PNG chart and the markdown table of one benchmark run."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.link import LinkSettings
from bench.measure import Sample

METRICS = ("time_s", "ttfr_s", "run_s", "pull_s", "total_s", "bytes_fetched")
BASELINES = {"vs_containerd": "containerd-overlayfs", "vs_stargz": "stargz-snapshotter"}
# A ratio needs the baseline to have measured the same workload (stargz has no "*-local").
TIMED = {"start": "pull -> first line", "read-usr": "pull -> read done",
         "second-start": "2nd run -> first line",
         "start-local": "fresh run, all local -> first line",
         "read-usr-local": "fresh run, all local -> read done"}


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median and spread; ``stdev`` is 0 for a single repetition."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def _split_summary(samples: Sequence[Sample]) -> dict[str, Any] | None:
    splits = [s.fetch_split for s in samples if s.fetch_split is not None]
    if not splits:
        return None
    out: dict[str, Any] = {k: statistics.median([float(x.get(k, 0)) for x in splits])
                           for k in splits[0] if k not in ("missing", "states")}
    if "missing" in splits[0]:
        out["missing"] = splits[0]["missing"]
    return out


def mode_result(samples: Mapping[str, Sequence[Sample]], errors: Sequence[str]
                ) -> dict[str, Any]:
    """Per workload: every sample and the median/min/max of each metric."""
    if not samples:
        return {"status": "failed", "reason": errors[0] if errors else "no samples",
                "errors": list(errors)}
    workloads = {}
    for name, ss in samples.items():
        summary = {m: summarize([float(getattr(s, m)) for s in ss]) for m in METRICS}
        if all(s.local_s is not None for s in ss):
            summary["local_s"] = summarize([float(s.local_s or 0) for s in ss])
        workloads[name] = {
            "timed": TIMED.get(name, ""),
            "samples": [s.to_json() for s in ss],
            "summary": summary,
            "fetch_split": _split_summary(ss),
        }
    return {"status": "ok", "errors": list(errors), "workloads": workloads}


def add_ratios(image: dict[str, Any]) -> None:
    """``ratios[workload][mode]``: median time over the baselines' median on that workload."""
    modes = image.get("modes", {})

    def median(mode: str, workload: str) -> float | None:
        r = modes.get(mode)
        if not r or r["status"] != "ok" or workload not in r["workloads"]:
            return None
        return float(r["workloads"][workload]["summary"]["time_s"]["median"])

    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for mode, r in modes.items():
        for workload in (r.get("workloads") or {}):
            mine = median(mode, workload)
            for key, base in BASELINES.items():
                theirs = median(base, workload)
                if mine is not None and theirs:
                    ratios.setdefault(workload, {}).setdefault(mode, {})[key] = mine / theirs
    image["ratios"] = ratios


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


def source() -> dict[str, Any]:
    """The commit this tree is at and whether it has uncommitted changes."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                             check=False)
        return res.stdout.strip() if res.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or "unknown", "dirty": bool(git("status", "--porcelain"))
            if commit else None}


def header(link: LinkSettings, reps: int) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": source(),
        "machine": machine(),
        "link": {"rate_bps": link.rate_bps, "rtt_ms": link.rtt_ms, "text": link.describe()},
        "reps": reps,
    }


def _fmt_s(s: dict[str, float]) -> str:
    return f"{s['median']:.2f} ({s['min']:.2f} to {s['max']:.2f})"


def markdown(result: dict[str, Any]) -> str:
    m, src = result["machine"], result["source"]
    lines = [
        f"{result['date']}, commit {src['commit'][:12]}{' (dirty)' if src['dirty'] else ''}; "
        f"{m['nproc']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']}; link "
        f"{result['link']['text']}; {result['reps']} cold reps (median (min to max), seconds; "
        "ratios of medians).",
        "",
        "| image | workload | mode | time | vs containerd | vs stargz | pull | MB fetched |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, img in result["images"].items():
        if "error" in img:
            lines.append(f"| {name} | — | — | unavailable: {_one_line(img['error'])} | | | | |")
            continue
        ratios = img.get("ratios", {})
        for mode, r in img["modes"].items():
            if r["status"] != "ok":
                lines.append(f"| {name} | — | {mode} | {r['status']}: {_one_line(r['reason'])} "
                             "| | | | |")
        for workload in _workloads(img):
            for mode, r in img["modes"].items():
                w = (r.get("workloads") or {}).get(workload)
                if w is None:
                    continue
                s, q = w["summary"], ratios.get(workload, {}).get(mode, {})
                lines.append(
                    f"| {name} | {workload} | {mode} | {_fmt_s(s['time_s'])} | "
                    f"{_ratio(q.get('vs_containerd'))} | {_ratio(q.get('vs_stargz'))} | "
                    f"{s['pull_s']['median']:.2f} | {s['bytes_fetched']['median'] / 1e6:.1f} |")
    lines += _local_lines(result)
    io_lines = _io_markdown(result)
    if io_lines:
        lines += ["", "| image | read path | cache | large file MB/s | walk+read s (files) |",
                  "|---|---|---|---|---|", *io_lines]
    return "\n".join(lines) + "\n"


def _local_lines(result: dict[str, Any]) -> list[str]:
    """When the hot modes' layers were local, against the time the link needs for the blob."""
    out = []
    rate = float(result["link"]["rate_bps"])
    for name, img in result["images"].items():
        for mode, r in (img.get("modes") or {}).items():
            for workload, w in (r.get("workloads") or {}).items():
                local = w["summary"].get("local_s")
                size = (img.get("image_bytes") or {}).get(r.get("variant", ""))
                if local is None or not size or not rate:
                    continue
                link_s = size * 8 / rate
                out.append(f"- {name} {mode} ({workload}): every layer local "
                           f"{local['median']:.1f} s after the pull began; the link needs "
                           f"{link_s:.1f} s for the image ({local['median'] / link_s:.2f}x)")
    return ["", *out] if out else []


def _workloads(img: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for r in img["modes"].values():
        for w in r.get("workloads") or {}:
            if w not in seen:
                seen.append(w)
    return seen


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


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
    """Median time per (image, workload) group and mode, whiskers at min and max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(name, w) for name, img in result["images"].items() if "modes" in img
              for w in _workloads(img)]
    modes: list[str] = []  # in run order, only those with numbers: no gaps for n/a modes
    for img in result["images"].values():
        for m, r in img.get("modes", {}).items():
            if r["status"] == "ok" and m not in modes:
                modes.append(m)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(groups) + 5), 5.0))
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        xs, ys, lo, hi = [], [], [], []
        for i, (name, workload) in enumerate(groups):
            r = result["images"][name]["modes"].get(mode) or {}
            w = (r.get("workloads") or {}).get(workload)
            if w is None:
                continue
            s = w["summary"]["time_s"]
            xs.append(i + (j - (len(modes) - 1) / 2) * width)
            ys.append(s["median"])
            lo.append(s["median"] - s["min"])
            hi.append(s["max"] - s["median"])
        if xs:
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=mode)
    ax.set_xticks(range(len(groups)), [f"{n}\n{w}" for n, w in groups], fontsize="small")
    ax.set_ylabel("seconds (median; see README for what each workload times)")
    src = result["source"]
    ax.set_title(f"link {result['link']['text']}, {result['reps']} reps, "
                 f"{src['commit'][:10]}{'+dirty' if src['dirty'] else ''}", fontsize="medium")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
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
