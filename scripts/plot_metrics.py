#!/usr/bin/python3
"""Plots a Trainer metrics CSV (metrics.csv) as PNGs: loss, accuracy, lr and grad norm per epoch.

    scripts/plot_metrics.py RUN/metrics.csv [MORE.csv ...] [--out DIR]
    scripts/plot_metrics.py curves.csv --group-by optimizer [--out DIR]

Several CSVs (runs to compare) share the axes, labelled by their directory names. With
--group-by COLUMN, one CSV holding several runs (e.g. examples/optimizer_comparison's, or
`trainrt compare`'s with --group-by run) is split into runs by that column's value. Needs
python3-matplotlib (apt). Prints the PNG paths.
"""
import argparse
import csv
import math
import os
import sys


def number(v):
    try:
        return float(v) if v not in ("", None) else math.nan
    except ValueError:
        return v  # a label column (optimizer, run, loss)


def read_rows(path):
    rows = list(csv.DictReader(open(path, newline="")))
    if not rows:
        sys.exit(f"plot_metrics: {path} has no rows")
    return rows


def columns(rows):
    return {key: [number(r.get(key, "")) for r in rows] for key in rows[0]}


def read(path):
    return columns(read_rows(path))


def read_grouped(path, key):
    rows = read_rows(path)
    if key not in rows[0]:
        sys.exit(f"plot_metrics: {path} has no column {key!r}")
    groups = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    return [(name, columns(rs)) for name, rs in groups.items()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--out", help="output directory (default: the first CSV's directory)")
    ap.add_argument("--group-by", metavar="COLUMN",
                    help="split each CSV into runs by this column (one CSV of several runs)")
    args = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_metrics: needs matplotlib (apt-get install python3-matplotlib)")
    if args.group_by:
        runs = [run for p in args.csv for run in read_grouped(p, args.group_by)]
    else:
        runs = [(os.path.basename(os.path.dirname(os.path.abspath(p))) or p, read(p))
                for p in args.csv]
    out = args.out or os.path.dirname(os.path.abspath(args.csv[0]))
    os.makedirs(out, exist_ok=True)
    plots = [
        ("loss", [("train_loss", "train"), ("val_loss", "val")], "loss"),
        ("accuracy", [("train_acc", "train"), ("val_acc", "val")], "accuracy"),
        ("lr", [("lr", "lr")], "learning rate"),
        ("grad_norm", [("grad_norm", "before clip"), ("grad_norm_clipped", "after clip")],
         "mean grad norm"),
    ]
    for name, series, ylabel in plots:
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = False
        for run, cols in runs:
            x = [e + 1 for e in cols["epoch"]]
            for key, label in series:
                ys = cols.get(key)
                if ys is None or not all(isinstance(v, float) for v in ys) or all(
                        math.isnan(v) for v in ys):
                    continue
                ax.plot(x, ys, marker="o", label=f"{run} {label}" if len(runs) > 1 else label)
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out, f"{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        print(path)


if __name__ == "__main__":
    main()
