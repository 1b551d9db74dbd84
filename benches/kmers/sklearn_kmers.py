"""The k-mer baseline in scikit-learn, timed: CountVectorizer(analyzer="char", ngram_range=(k, k))
and LinearRegression on a `id, sequence, targets...` table. Prints one JSON line:
{"count_s", "fit_s", "rows", "features", "r2_train", "predictions": path}.

Usage: python sklearn_kmers.py TABLE.tsv K OUT_PREDICTIONS.tsv
"""

import csv
import json
import sys
import time

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LinearRegression


def main() -> None:
    table, k, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(table, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header, rows = rows[0], rows[1:]
    seqs = [r[1] for r in rows]
    y = np.array([[float(v) for v in r[2:]] for r in rows])

    start = time.perf_counter()
    x = CountVectorizer(analyzer="char", ngram_range=(k, k), lowercase=False).fit_transform(seqs)
    count_s = time.perf_counter() - start

    start = time.perf_counter()
    model = LinearRegression().fit(x, y)
    fit_s = time.perf_counter() - start

    pred = model.predict(x)
    ss_res = ((y - pred) ** 2).sum()
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum()
    np.savetxt(out, pred, delimiter="\t", fmt="%.9g")
    print(
        json.dumps(
            {
                "count_s": count_s,
                "fit_s": fit_s,
                "rows": len(seqs),
                "features": x.shape[1],
                "targets": len(header) - 2,
                "r2_train": 1 - ss_res / ss_tot,
            }
        )
    )


if __name__ == "__main__":
    main()
