#!/usr/bin/env python3
"""Seed statistics of scripts/quality.py results: is one trainer better than another beyond seed noise?

Reads one or more quality.json files (rows of trainer, constraint, iters, seed, fd, modes, white)
and prints, per constraint and iteration count, each trainer's FD over seeds (n, mean, median,
standard deviation, min-max, runs that cover fewer than --collapsed classes), then for each pair
of trainers: the Mann-Whitney U test of their FDs (two-sided, seeds as independent draws) and,
over the seeds both ran, the Wilcoxon signed-rank test of the paired differences (two-sided) with
how many seeds each won, where a seed means the same thing to both: trainers that share the
reference's stream (every `peer*`: its critic, batches and noise of that seed), or ours against a
`peer-init*` trainer (our initial weights of that seed). Ours and the reference of one seed share
nothing (their random generators differ), so they are compared as independent draws only. A row
seen twice (same trainer, constraint, iterations and seed) keeps the later file's.

  python3 scripts/quality_stats.py runs/q-a/quality.json runs/q-b/quality.json
"""
import argparse
import itertools
import json

import numpy as np
from scipy import stats


def load(paths):
    rows = {}
    for path in paths:
        with open(path) as f:
            for r in json.load(f):
                rows[(r["trainer"], r["constraint"], r["iters"], r["seed"])] = r
    return list(rows.values())


def paired(t1, t2):
    """Whether seed s means the same thing to trainers t1 and t2 (see the module doc)."""
    pair = sorted([t1, t2])
    return all(t.startswith("peer") for t in pair) or (pair[0] == "ours" and pair[1].startswith("peer-init"))


def summary(fd, modes, collapsed):
    fd = np.array(fd)
    return (f"n {len(fd):2d}  mean {fd.mean():6.1f}  median {np.median(fd):6.1f}  "
            f"std {fd.std(ddof=1) if len(fd) > 1 else 0:5.1f}  ({fd.min():5.1f}-{fd.max():5.1f})  "
            f"collapsed {sum(m < collapsed for m in modes)}/{len(fd)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--collapsed", type=int, default=7,
                   help="a run covering fewer classes than this counts as collapsed (default 7)")
    a = p.parse_args()
    rows = load(a.files)
    for c, iters in sorted({(r["constraint"], r["iters"]) for r in rows}):
        group = [r for r in rows if r["constraint"] == c and r["iters"] == iters]
        trainers = sorted({r["trainer"] for r in group})
        by = {t: {r["seed"]: r for r in group if r["trainer"] == t} for t in trainers}
        print(f"{c}, {iters} iterations: FD over seeds (lower is better)")
        for t in trainers:
            rs = list(by[t].values())
            print(f"  {t:18s} {summary([r['fd'] for r in rs], [r['modes'] for r in rs], a.collapsed)}")
        for t1, t2 in itertools.combinations(trainers, 2):
            x = [r["fd"] for r in by[t1].values()]
            y = [r["fd"] for r in by[t2].values()]
            tests = []
            if len(x) > 1 and len(y) > 1:
                tests.append(f"Mann-Whitney p = {stats.mannwhitneyu(x, y).pvalue:.3f}")
            seeds = sorted(set(by[t1]) & set(by[t2]))
            if len(seeds) > 1 and paired(t1, t2):
                d = [by[t1][s]["fd"] - by[t2][s]["fd"] for s in seeds]
                wins = sum(v < 0 for v in d)
                tests.append(f"paired over {len(seeds)} seeds: {t1} lower on {wins}, "
                             f"mean difference {np.mean(d):+.1f}, "
                             f"Wilcoxon p = {stats.wilcoxon(d).pvalue:.3f}")
            if tests:
                print(f"  {t1} vs {t2}: " + "; ".join(tests))


if __name__ == "__main__":
    main()
