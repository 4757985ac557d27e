"""`make bench-quality`: the loss strategies on real text and the reference recipe, one table, through the real CLI.

1. strategies: word-level WikiText-2 (train on wikitext2.valid, test on wikitext2.test, one tokenizer of
   --vocab-size words), E = H = 128, Adam lr 0.002, batch 32 x 35, 4 epochs: full and sampled on two seeds (the
   spread tells a 2% difference from noise), sampled with per-row candidate sets, TAPAS with each
   --tapas-correction, at equal epochs; then the approximations continued (exact resume) for the epochs full's
   training time buys: equal time.
2. reference: ../shared/corpora/wt2word with the PyTorch example's recipe (2 x 200 LSTM, dropout 0.2, SGD lr 20
   divided by 4 when validation stalls, clip 0.25, bptt 35, batch 20, 6 epochs, seed 1111) next to its 211.99.
3. terms (`make bench-terms`, not in the default run): the full softmax with no term and with each loss term or
   regulariser, the strategies' setup, at equal epochs.

Needs ../shared/corpora (not part of this repo); the project's tests never do. About 19 minutes on 2 cores for
strategies + reference (E = H = 128 rather than 256 so that it fits in 20), about 10 for terms.

    python bench/quality.py [--tables strategies,reference,terms] [--epochs 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT.parent / "shared" / "corpora"
REFERENCE_PPL = 211.99  # PyTorch word_language_model on wt2word, ../shared/corpora/README.md
MODEL = ["--embedding-dim", 128, "--hidden", 128, "--batch-size", 32, "--seq-len", 35, "--lr", 0.002,
         "--clip-norm", 1.0, "--dropout", 0.2, "--checkpoint-every", 100000]
# label -> (train flags, seeds, continue to equal time)
STRATEGIES = {
    "full": ([], (1, 2), False),
    "sampled": (["--loss", "sampled"], (1, 2), True),
    "sampled, row sets (256)": (["--loss", "sampled", "--candidate-sets", "row", "--num-sampled", 256], (1,), False),
    "tapas resample": (["--loss", "tapas"], (1,), True),
    "tapas none (TF1)": (["--loss", "tapas", "--tapas-correction", "none"], (1,), True),
}
TERMS = {
    "embedding dropout 0.1": ["--embedding-dropout", 0.1],
    "variational embedding": ["--variational-embedding"],
    "embedding term": ["--aux-loss", "embedding"],
    "ar + tar": ["--aux-loss", "ar", "--aux-loss", "tar"],
}
REFERENCE = ["--embedding-dim", 200, "--hidden", 200, "--layers", 2, "--dropout", 0.2, "--optimizer", "sgd",
             "--lr", 20, "--clip-norm", 0.25, "--seq-len", 35, "--batch-size", 20, "--seed", 1111,
             "--lr-schedule", "plateau", "--lr-decay", 4, "--checkpoint-every", 100000]


@dataclass
class Row:
    table: str
    label: str
    epochs: int
    ppl: list = field(default_factory=list)
    top1: list = field(default_factory=list)
    top5: list = field(default_factory=list)
    seconds: list = field(default_factory=list)

    def add(self, ev: dict, seconds: float) -> None:
        self.ppl.append(ev["perplexity"])
        self.top1.append(ev["top1"])
        self.top5.append(ev["top5"])
        self.seconds.append(seconds)


def lmcli(*args) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "lmcli", *map(str, args), "--json", "--quiet"], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"lmcli {' '.join(map(str, args[:2]))} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def train_eval(data: Path, run: Path, flags: list, epochs: int, restart: bool = True) -> tuple[dict, float]:
    """Train `run` up to `epochs` (continuing it unless `restart`), then score the test split: (eval, seconds)."""
    trained = lmcli("train", data, "--run-dir", run, *(["--restart"] if restart else []), "--epochs", epochs, *flags)
    return lmcli("eval", run, "--split", "test", "--checkpoint", "latest"), trained["seconds"]


def report(row: Row) -> None:
    spread = f" ({' / '.join(f'{p:.2f}' for p in row.ppl)})" if len(row.ppl) > 1 else ""
    print(f"[{row.table}] {row.label:<24} {row.epochs:>2} ep  test ppl {mean(row.ppl):8.2f}{spread}  "
          f"top1 {mean(row.top1):.3f}  top5 {mean(row.top5):.3f}  train {mean(row.seconds):6.1f} s", flush=True)


def strategies(data: Path, out: Path, epochs: int) -> list[Row]:
    """Equal-epoch rows, then equal-time rows: each approximation's seed-1 run continued for the epochs full's
    seed-1 training time buys (the resume is exact, so this is the run that would have trained that long)."""
    rows, timed = [], []
    for label, (flags, seeds, _) in STRATEGIES.items():
        row = Row("epochs", label, epochs)
        for seed in seeds:
            row.add(*train_eval(data, out / f"{slug(label)}-{seed}", [*flags, *MODEL, "--seed", seed], epochs))
        rows.append(row)
        report(row)
    budget = rows[0].seconds[0]  # full, seed 1
    for row, (label, (_, seeds, equal_time)) in zip(rows, STRATEGIES.items()):
        if not equal_time:
            continue
        more = max(epochs, int(budget // (row.seconds[0] / epochs)))  # the epochs full's time buys
        ev, seconds = (train_eval(data, out / f"{slug(label)}-{seeds[0]}", [], more, restart=False)
                       if more > epochs else (None, 0.0))
        late = Row("time", label, more)
        late.add(ev or {"perplexity": row.ppl[0], "top1": row.top1[0], "top5": row.top5[0]}, row.seconds[0] + seconds)
        timed.append(late)
        report(late)
    return rows + timed


def terms(data: Path, out: Path, epochs: int) -> list[Row]:
    rows = []
    for label, flags in {"full, no term": [], **TERMS}.items():
        row = Row("terms", label, epochs)
        row.add(*train_eval(data, out / f"term-{slug(label)}", [*flags, *MODEL, "--seed", 1], epochs))
        rows.append(row)
        report(row)
    return rows


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label)


def reference(out: Path) -> Row:
    words = CORPORA / "wt2word"
    data = out / "wt2word-data"
    if not (data / "manifest.json").exists():
        lmcli("prepare", words / "train.txt", "--valid", words / "valid.txt", "--test", words / "test.txt",
              "--out", data, "--model-type", "word", "--vocab-size", "max", "--force")
    row = Row("reference", "full, reference recipe", 6)
    row.add(*train_eval(data, out / "wt2word-run", REFERENCE, 6))
    report(row)
    return row


def table(rows: list[Row], full_ppl: float) -> None:
    terms_ppl = next((mean(r.ppl) for r in rows if r.table == "terms"), 1.0)
    print("\n| table | strategy / term | epochs | test ppl (seeds) | top-1 | top-5 | train s | ppl ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ppl = " / ".join(f"{p:.2f}" for p in r.ppl)
        ppl = f"{mean(r.ppl):.2f} ({ppl})" if len(r.ppl) > 1 else ppl
        ratio = f"{mean(r.ppl) / full_ppl:.3f}" if r.table in ("epochs", "time") else ""
        if r.table == "terms":
            ratio = f"{mean(r.ppl) / terms_ppl:.3f} of no term"
        if r.table == "reference":
            ratio = f"{mean(r.ppl) / REFERENCE_PPL:.3f} of PyTorch's {REFERENCE_PPL}"
        print(f"| {r.table} | {r.label} | {r.epochs} | {ppl} | {mean(r.top1):.3f} | {mean(r.top5):.3f} | "
              f"{mean(r.seconds):.0f} | {ratio} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", default="strategies,reference",
                   help="comma-separated: strategies, reference, terms (make bench-terms)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=12000)
    p.add_argument("--out", default=str(ROOT / "bench-quality"))
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    tables = set(a.tables.split(","))
    if not tables <= {"strategies", "reference", "terms"}:
        sys.exit(f"--tables: unknown {', '.join(sorted(tables - {'strategies', 'reference', 'terms'}))}")
    if not (CORPORA / "wikitext2.valid.txt").exists():
        print(f"bench-quality: {CORPORA} not found; nothing to do (the corpora are not part of this repo)")
        return
    out = Path(a.out)
    data = out / "data"
    if tables & {"strategies", "terms"} and not (data / "manifest.json").exists():
        lmcli("prepare", CORPORA / "wikitext2.valid.txt", "--test", CORPORA / "wikitext2.test.txt", "--out", data,
              "--vocab-size", a.vocab_size, "--model-type", "word", "--force")
    rows = strategies(data, out, a.epochs) if "strategies" in tables else []
    rows += terms(data, out, a.epochs) if "terms" in tables else []
    if "reference" in tables and (CORPORA / "wt2word" / "train.txt").exists():
        rows.append(reference(out))
    table(rows, mean(rows[0].ppl) if rows else 1.0)
    if a.json:
        print(json.dumps({"rows": [asdict(r) for r in rows], "vocab_size": a.vocab_size}))


if __name__ == "__main__":
    main()
