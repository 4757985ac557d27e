"""`make bench`: every benchmark, each measured side by side in one process, printed as ratios.

    python bench/run_all.py [--steps N] [--vocabs 32000,100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = {32000: 5.0, 100000: 12.0}  # sampled / full
TERMS_TARGET = 0.9  # sampled with a loss term / sampled without, at V = 100k
EXTRAS = "embedding,ar,tar,variational,word-dropout"


def run_json(script: str, *args: str, echo: bool = False) -> dict:
    """The JSON report `script --json` prints last; with `echo`, its table (the lines before) is printed too."""
    out = subprocess.run([sys.executable, os.path.join(HERE, script), *args, "--json"], check=True,
                         capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    if echo:
        print("\n".join(lines[:-1]), flush=True)
    return json.loads(lines[-1])


def ratio(a, b):
    return a / b if a and b else None


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def terms_table(steps: int) -> dict:
    """Sampled softmax at V = 100k with each loss term / regulariser on, over the same run without it."""
    r = run_json("train_speed.py", "--vocab", "100000", "--strategies", "sampled", "--extras", EXTRAS,
                 "--steps", str(steps), "--rounds", "3")
    t = r["tokens_per_s"]
    base = t["sampled"]
    print(f"\nloss terms, sampled at V = 100k (E = H = 512, batch 32 x 35): tokens/s with the term / without "
          f"(target >= {TERMS_TARGET})", flush=True)
    print(f"{'term':>14} {'tokens/s':>9} {'ratio':>6}", flush=True)
    print(f"{'(none)':>14} {base:9.0f} {1.0:6.2f}", flush=True)
    r["ratios"] = {}
    for extra in EXTRAS.split(","):
        rate = t[f"sampled+{extra}"]
        r["ratios"][extra] = rate / base
        print(f"{extra:>14} {rate:9.0f} {rate / base:6.2f}", flush=True)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--vocabs", default="32000,100000")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    report = {"train_speed": []}
    print("training tokens/s, E = H = 512, batch 32 x 35 (one process per vocabulary)", flush=True)
    print("(sampled: 2048 shared candidates, the default; s1024: 1024, the earlier default; row: --candidate-sets "
          "row, 256 per row; tapas: 2048 -> 1024)", flush=True)
    print(f"{'V':>7} {'full':>8} {'sampled':>8} {'s1024':>8} {'row':>8} {'tapas':>8} {'floor':>8} | {'samp/full':>9}"
          f" {'target':>6} {'s1024/full':>10} {'samp/floor':>10} {'row/samp':>8} {'tapas/samp':>10}", flush=True)
    for vocab in [int(v) for v in a.vocabs.split(",")]:
        r = run_json("train_speed.py", "--vocab", str(vocab), "--steps", str(a.steps))
        t = r["tokens_per_s"]
        r["ratios"] = {"sampled_over_full": ratio(t.get("sampled"), t.get("full")),
                       "sampled_over_floor": ratio(t.get("sampled"), t.get("floor")),
                       "tapas_over_sampled": ratio(t.get("tapas"), t.get("sampled")),
                       "row_over_sampled": ratio(t.get("sampled-row"), t.get("sampled")),
                       "sampled_1024_over_full": ratio(t.get("sampled-1024"), t.get("full"))}
        report["train_speed"].append(r)
        rr = r["ratios"]
        print(f"{vocab:>7} {fmt(t.get('full'), '.0f'):>8} {fmt(t.get('sampled'), '.0f'):>8} "
              f"{fmt(t.get('sampled-1024'), '.0f'):>8} {fmt(t.get('sampled-row'), '.0f'):>8} "
              f"{fmt(t.get('tapas'), '.0f'):>8} {fmt(t.get('floor'), '.0f'):>8} | "
              f"{fmt(rr['sampled_over_full']):>9} {'>=' + format(TARGETS.get(vocab, 0), '.0f'):>6} "
              f"{fmt(rr['sampled_1024_over_full']):>10} "
              f"{fmt(rr['sampled_over_floor']):>10} {fmt(rr['row_over_sampled']):>8} "
              f"{fmt(rr['tapas_over_sampled']):>10}", flush=True)
    report["terms_speed"] = terms_table(a.steps)
    print(flush=True)
    report["scale"] = run_json("scale.py", "--steps", str(a.steps), echo=True)
    print(flush=True)
    report["threads"] = run_json("threads.py", "--steps", str(a.steps), echo=True)
    if os.path.exists(os.path.join(HERE, "generate_speed.py")):
        g = run_json("generate_speed.py")
        report["generate_speed"] = g
        print("generation:", json.dumps(g), flush=True)
    if a.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
