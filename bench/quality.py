"""`make bench-quality`: the loss strategies' perplexity on real text, checked against a baseline kept in the repo.

One fixed configuration, trained and scored through the real CLI: ../shared/corpora/wt2word (train = WikiText-2
valid, valid / test = the first 40% / the rest of WikiText-2 test) prepared with `--model-type word --vocab-size
max` (V = 13,713), E = H = 128, Adam lr 0.002, batch 32 x 35, clip 1, dropout 0.2, 4 epochs, seeds 1, 2 and 3.
Rows: the full softmax; sampled softmax with 550 and 1100 candidates (4% and 8% of V); TAPAS keeping 550 of 1100
and 1100 of 2200 (the first pass twice the kept, as the defaults 2048 -> 1024 are). Each run is scored with
`lmcli eval RUN --split valid|test --checkpoint latest` (the full softmax, perplexity in nats). Printed per row:
valid and test perplexity, mean +- sample sd over the seeds and per seed, and the ratio to the full softmax of
the same seed (per seed, mean +- sd); then, against bench/quality_baseline.json, the baseline's mean, this
run's mean, their difference and the difference in standard errors, SE = sqrt(sd_base^2/n_base + sd_now^2/n_now)
("identical" when both the difference and SE are 0); at the end the total wall time and each seed's share.

bench/quality_baseline.json holds the figures of the commit that recorded them: its hash (and whether the tree
had uncommitted changes to tracked files), the date, the configuration (every flag, the seeds, the epochs, the
data) and per row and seed the valid and test perplexity and the seconds. `--record` rewrites it (atomically).
Changing the configuration means re-recording, and recording on the code from before the change as well: a
baseline recorded on the changed code alone would measure the change and the new configuration together.

Exit codes:
  0  no row's test perplexity is worse than the baseline's (always 0 with --record, which replaces it)
  1  an lmcli command failed
  2  the baseline's configuration differs from this one, or there is no baseline (without --record)
  3  some row's test perplexity is worse than the baseline's by more than 2 standard errors AND more than 1%

More tables (--tables, comma-separated; the default is `baseline`):
  long       continue every baseline run (same run dir, exact resume) to 12 epochs and compare at 12 epochs;
             recorded with --record, printed, but never sets the exit code (the check of record is at 4 epochs)
  reference  the full softmax on wt2word with the PyTorch example's recipe (2 x 200 LSTM, dropout 0.2, SGD lr 20
             divided by 4 when validation stalls, clip 0.25, bptt 35, batch 20, 6 epochs, seed 1111) next to
             its 211.99; about 6 minutes
  terms      (`make bench-terms`) the full softmax with no term and with each loss term or regulariser, on
             WikiText-2 valid -> test with a --vocab-size tokenizer, 4 epochs, seed 1; about 10 minutes

Needs ../shared/corpora (not part of this repo); the project's tests never do. The default run took 24.4 minutes
on 2 cores that other jobs were also using (load average 3 to 4), each seed about a third of it; `long` took
61 minutes more, with a second benchmark and other jobs on the same cores.

    python bench/quality.py [--record] [--tables baseline,long,reference,terms] [--baseline FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from statistics import mean, stdev

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT.parent / "shared" / "corpora"
WT2WORD = CORPORA / "wt2word"
BASELINE = ROOT / "bench" / "quality_baseline.json"
REFERENCE_PPL = 211.99  # PyTorch word_language_model on wt2word, ../shared/corpora/README.md
PREPARE = ["--model-type", "word", "--vocab-size", "max"]
MODEL = ["--embedding-dim", 128, "--hidden", 128, "--batch-size", 32, "--seq-len", 35, "--lr", 0.002,
         "--clip-norm", 1.0, "--dropout", 0.2, "--checkpoint-every", 100000]
SEEDS = (1, 2, 3)
EPOCHS, LONG_EPOCHS = 4, 12
# label -> train flags (with MODEL and --seed); the first row is the one the ratios divide by
ROWS = {
    "full": [],
    "sampled 550": ["--loss", "sampled", "--num-sampled", 550],
    "sampled 1100": ["--loss", "sampled", "--num-sampled", 1100],
    "tapas 550 of 1100": ["--loss", "tapas", "--num-resampled", 550, "--num-sampled", 1100],
    "tapas 1100 of 2200": ["--loss", "tapas", "--num-resampled", 1100, "--num-sampled", 2200],
}
WORSE_SE, WORSE_SHARE = 2.0, 0.01  # a row fails when its test ppl is worse by more than both
TERMS = {
    "embedding dropout 0.1": ["--embedding-dropout", 0.1],
    "variational embedding": ["--variational-embedding"],
    "embedding term": ["--aux-loss", "embedding"],
    "ar + tar": ["--aux-loss", "ar", "--aux-loss", "tar"],
}
REFERENCE = ["--embedding-dim", 200, "--hidden", 200, "--layers", 2, "--dropout", 0.2, "--optimizer", "sgd",
             "--lr", 20, "--clip-norm", 0.25, "--seq-len", 35, "--batch-size", 20, "--seed", 1111,
             "--lr-schedule", "plateau", "--lr-decay", 4, "--checkpoint-every", 100000]
TABLES = ("baseline", "long", "reference", "terms")


@dataclass
class Row:
    """One row's figures, one entry per seed (in SEEDS order)."""
    label: str
    valid: list = field(default_factory=list)
    test: list = field(default_factory=list)
    train_s: list = field(default_factory=list)  # lmcli train's own seconds
    wall_s: list = field(default_factory=list)  # the train and both evals, processes included


def lmcli(*args) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "lmcli", *map(str, args), "--json", "--quiet"], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"lmcli {' '.join(map(str, args[:2]))} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def wt2word_data(out: Path) -> tuple[Path, dict]:
    """The prepared wt2word data dir (prepared once per --out) and its description for the configuration."""
    data = out / "wt2word-data"
    if not (data / "manifest.json").exists():
        lmcli("prepare", WT2WORD / "train.txt", "--valid", WT2WORD / "valid.txt", "--test", WT2WORD / "test.txt",
              "--out", data, *PREPARE, "--force")
    manifest = json.loads((data / "manifest.json").read_text())
    tokenizer = manifest["tokenizer"]
    return data, {"corpus": "../shared/corpora/wt2word/{train,valid,test}.txt", "prepare": PREPARE,
                  "vocab_size": tokenizer["vocab_size"], "tokenizer_sha256": tokenizer["sha256"],
                  "tokens": {name: split["tokens"] for name, split in manifest["splits"].items()}}


def configuration(data: dict) -> dict:
    """Everything the baseline's figures depend on that this script chooses, as JSON would read it back."""
    return json.loads(json.dumps({"data": data, "model": MODEL, "rows": ROWS, "seeds": SEEDS, "epochs": EPOCHS,
                                  "eval": "lmcli eval RUN --split valid|test --checkpoint latest"}))


def differences(old, new, at: str = "") -> list[str]:
    """Dotted paths where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(old.keys() | new.keys()) for d in differences(old.get(k), new.get(k), f"{at}.{k}")]
    return [] if old == new else [at.lstrip(".") or "(all)"]


def run_one(data: Path, run: Path, flags: list, epochs: int, restart: bool) -> tuple[float, float, float, float]:
    """Train `run` up to `epochs` (continuing it unless `restart`), score valid and test: (valid, test, train s,
    wall s)."""
    t0 = time.monotonic()
    trained = lmcli("train", data, "--run-dir", run, *(["--restart"] if restart else []), "--epochs", epochs, *flags)
    valid, test = (lmcli("eval", run, "--split", split, "--checkpoint", "latest")["perplexity"]
                   for split in ("valid", "test"))
    return valid, test, trained["seconds"], time.monotonic() - t0


def run_table(data: Path, out: Path, epochs: int, restart: bool) -> list[Row]:
    """Every row on every seed, `epochs` epochs; run dirs out/baseline/<row>-<seed>, continued when not `restart`."""
    rows = []
    for label, flags in ROWS.items():
        row = Row(label)
        for seed in SEEDS:
            flags_now = [*flags, *MODEL, "--seed", seed] if restart else []  # a resumed run keeps its saved options
            figures = run_one(data, out / "baseline" / f"{slug(label)}-{seed}", flags_now, epochs, restart)
            for values, value in zip((row.valid, row.test, row.train_s, row.wall_s), figures):
                values.append(value)
        print(f"[{epochs} ep] {label:<20} valid {spread(row.valid)}  test {spread(row.test)}  "
              f"wall {sum(row.wall_s):.0f} s", flush=True)
        rows.append(row)
    return rows


def spread(values: list, digits: int = 2) -> str:
    """'mean +- sd (v1 / v2 / ...)' with the sample standard deviation."""
    sd = stdev(values) if len(values) > 1 else 0.0
    each = " / ".join(f"{v:.{digits}f}" for v in values)
    return f"{mean(values):.{digits}f} ± {sd:.{digits}f} ({each})"


def summary(rows: list[Row], epochs: int) -> None:
    full = rows[0]
    print(f"\n{epochs} epochs, seeds {', '.join(map(str, SEEDS))}: perplexity mean ± sd (per seed); ratio to "
          f"{full.label} of the same seed")
    trained = "train s" if epochs == EPOCHS else f"train s ({EPOCHS} -> {epochs})"
    print(f"| row | valid ppl | test ppl | valid / full | test / full | {trained} |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratios = {s: [a / b for a, b in zip(getattr(r, s), getattr(full, s))] for s in ("valid", "test")}
        print(f"| {r.label} | {spread(r.valid)} | {spread(r.test)} | {spread(ratios['valid'], 3)} | "
              f"{spread(ratios['test'], 3)} | {mean(r.train_s):.0f} |")


def verdict(base: list, now: list) -> tuple[float, float, str]:
    """(difference of the means, difference / SE, 'identical' | 'worse' | 'ok'); identical = every seed's value
    bit for bit; worse = higher by more than WORSE_SE standard errors and more than WORSE_SHARE of the baseline."""
    diff = mean(now) - mean(base)
    se = math.sqrt(sum(stdev(v) ** 2 / len(v) if len(v) > 1 else 0.0 for v in (base, now)))
    z = diff / se if se else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    if base == now or (diff == 0 and se == 0):
        return diff, z, "identical"
    return diff, z, "worse" if diff > WORSE_SE * se and diff > WORSE_SHARE * mean(base) else "ok"


def compare(base: list[Row], now: list[Row], epochs: int, gating: bool) -> bool:
    """Print the baseline next to this run; True when some row's test perplexity is worse."""
    old = {r.label: r for r in base}
    print(f"\nagainst the baseline, {epochs} epochs ({'test decides the exit code' if gating else 'not gating'}):")
    print("| row | split | baseline | now | difference | difference / SE | largest change of a seed | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    worse = False
    for r in now:
        if r.label not in old:
            print(f"| {r.label} | | (not in the baseline) | | | | |")
            continue
        for split in ("valid", "test"):
            b, n = getattr(old[r.label], split), getattr(r, split)
            diff, z, word = verdict(b, n)
            worse |= split == "test" and word == "worse"
            moved = max((abs(y - x) / x for x, y in zip(b, n)), default=0.0) if len(b) == len(n) else math.nan
            print(f"| {r.label} | {split} | {mean(b):.2f} | {mean(n):.2f} | {diff:+.2f} ({diff / mean(b):+.2%}) | "
                  f"{z:+.2f} | {moved:.2e} | {word} |")
    return worse


def git_state() -> dict:
    def git(*args) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}


def machine() -> dict:
    versions = {name: metadata.version(name) for name in ("tensorflow", "keras")}
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), **versions}


def record(path: Path, head: dict, cfg: dict, tables: dict[int, list[Row]], seconds: float) -> None:
    """Write the baseline through a temporary file and a rename, so that a stopped run leaves the old one whole."""
    doc = {**head, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
           "configuration": cfg, "seconds": round(seconds, 1),
           "epochs": {str(e): [asdict(r) for r in rows] for e, rows in tables.items()}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    print(f"\nrecorded {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
          f"(commit {head['commit'][:12]}{', uncommitted changes' if head['dirty'] else ''})")


def load_baseline(path: Path) -> dict | None:
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    doc["tables"] = {int(e): [Row(**r) for r in rows] for e, rows in doc["epochs"].items()}
    return doc


def terms(out: Path, vocab_size: int) -> None:
    data = out / "data"
    if not (data / "manifest.json").exists():
        lmcli("prepare", CORPORA / "wikitext2.valid.txt", "--test", CORPORA / "wikitext2.test.txt", "--out", data,
              "--vocab-size", vocab_size, "--model-type", "word", "--force")
    print(f"\nterms: WikiText-2 valid -> test, V = {vocab_size}, full softmax, {EPOCHS} epochs, seed 1")
    print("| added to the full softmax | test ppl | top-1 | top-5 | train s | ppl / no term |")
    print("|---|---|---|---|---|---|")
    first = None
    for label, flags in {"nothing": [], **TERMS}.items():
        run = out / f"term-{slug(label)}"
        trained = lmcli("train", data, "--run-dir", run, "--restart", "--epochs", EPOCHS, *flags, *MODEL, "--seed", 1)
        ev = lmcli("eval", run, "--split", "test", "--checkpoint", "latest")
        first = first or ev["perplexity"]
        print(f"| {label} | {ev['perplexity']:.2f} | {ev['top1']:.3f} | {ev['top5']:.3f} | {trained['seconds']:.0f} | "
              f"{ev['perplexity'] / first:.3f} |", flush=True)


def reference(out: Path) -> None:
    data, _ = wt2word_data(out)
    run = out / "wt2word-run"
    trained = lmcli("train", data, "--run-dir", run, "--restart", "--epochs", 6, *REFERENCE)
    ev = lmcli("eval", run, "--split", "test", "--checkpoint", "latest")
    print(f"\nreference recipe on wt2word, 6 epochs: test ppl {ev['perplexity']:.2f} "
          f"({ev['perplexity'] / REFERENCE_PPL:.3f} of PyTorch's {REFERENCE_PPL}), train {trained['seconds']:.0f} s")


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label)


def seconds_footer(total: float, tables: dict[int, list[Row]]) -> None:
    """The total wall time, and each table's and seed's share of it (train and evals, processes included)."""
    print(f"\nwall time {total:.0f} s ({total / 60:.1f} min)")
    spent = 0.0
    for epochs, rows in tables.items():
        per_seed = [sum(r.wall_s[i] for r in rows) for i in range(len(SEEDS))]
        spent += sum(per_seed)
        shares = ", ".join(f"seed {s} {t:.0f} s ({t / total:.0%})" for s, t in zip(SEEDS, per_seed))
        print(f"  {'' if epochs == EPOCHS else f'{EPOCHS} -> '}{epochs} epochs: {sum(per_seed):.0f} s: {shares}")
    if tables:
        print(f"  the rest (data, other tables, this script): {total - spent:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", default="baseline", help=f"comma-separated: {', '.join(TABLES)}")
    p.add_argument("--record", action="store_true", help="write the baseline file from this run")
    p.add_argument("--baseline", default=str(BASELINE), help="the baseline file to compare with (and --record to)")
    p.add_argument("--vocab-size", type=int, default=12000, help="terms: the tokenizer's size")
    p.add_argument("--out", default=str(ROOT / "bench-quality"))
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object at the end")
    a = p.parse_args()
    wanted = set(a.tables.split(",")) | ({"baseline"} if a.record else set())
    if not wanted <= set(TABLES):
        sys.exit(f"--tables: unknown {', '.join(sorted(wanted - set(TABLES)))}")
    if not (WT2WORD / "train.txt").exists():
        print(f"bench-quality: {CORPORA} not found; nothing to do (the corpora are not part of this repo)")
        return
    t0, head, out, path = time.monotonic(), git_state(), Path(a.out), Path(a.baseline)
    tables: dict[int, list[Row]] = {}
    worse, cfg = False, None
    if wanted & {"baseline", "long"}:
        data, described = wt2word_data(out)
        cfg = configuration(described)
        base = load_baseline(path)
        changed = [] if base is None else differences(base["configuration"], cfg)
        then = "recording a new one" if a.record else "rerun with --record, on the code from before the change too"
        if base is None:
            print(f"no baseline at {path}: {'recording one' if a.record else 'rerun with --record'}")
        elif changed:
            print(f"the baseline {path.name} does not match this configuration ({', '.join(changed[:6])}): {then}")
        if base is None or changed:
            if not a.record:
                sys.exit(2)
            base = None
        else:
            print(f"baseline: commit {base['commit'][:12]}{' (uncommitted changes)' if base['dirty'] else ''}, "
                  f"{base['date']}, tensorflow {base['machine']['tensorflow']} on {base['machine']['cpus']} cpus")
        print(f"wt2word: V = {described['vocab_size']}, tokens {described['tokens']}", flush=True)
        tables[EPOCHS] = run_table(data, out, EPOCHS, restart=True)
        summary(tables[EPOCHS], EPOCHS)
        worse = compare(base["tables"][EPOCHS], tables[EPOCHS], EPOCHS, gating=True) if base else False
        if a.record:  # now, and again with the long table if it is wanted
            record(path, head, cfg, tables, time.monotonic() - t0)
        if "long" in wanted:
            tables[LONG_EPOCHS] = run_table(data, out, LONG_EPOCHS, restart=False)
            summary(tables[LONG_EPOCHS], LONG_EPOCHS)
            if base and LONG_EPOCHS in base["tables"]:
                compare(base["tables"][LONG_EPOCHS], tables[LONG_EPOCHS], LONG_EPOCHS, gating=False)
            elif base:
                print(f"\n(the baseline has no {LONG_EPOCHS}-epoch figures: record them with --record --tables long)")
    if "reference" in wanted:
        reference(out)
    if "terms" in wanted:
        terms(out, a.vocab_size)
    total = time.monotonic() - t0
    if a.record and LONG_EPOCHS in tables:
        record(path, head, cfg, tables, total)
    seconds_footer(total, tables)
    if a.json:
        print(json.dumps({"configuration": cfg, "seconds": total, "worse": worse,
                          "epochs": {str(e): [asdict(r) for r in rows] for e, rows in tables.items()}}))
    if worse and not a.record:
        print(f"worse than the baseline: a row's test perplexity is up by more than {WORSE_SE:g} standard errors "
              f"and more than {WORSE_SHARE:.0%}")
        sys.exit(3)


if __name__ == "__main__":
    main()
