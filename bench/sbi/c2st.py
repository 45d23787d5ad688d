"""C2ST accuracy as in sbibm (Lueckmann et al. 2021): both sample sets z-scored by the
reference's mean and std, an MLP classifier (ReLU, two hidden layers of 10·dim, Adam), 5-fold
shuffled cross-validation, mean accuracy. 0.5: indistinguishable.

    python c2st.py REFERENCE.csv SAMPLES.csv [--n 10000] [--seed 1] [--early-stopping]

--early-stopping departs from sbibm: each fold's classifier stops when 10 % of its training
rows stop improving (instead of when its training loss does). When the two sets are nearly
indistinguishable, sbibm's classifier memorizes its training rows for up to 10,000 epochs
(hours per observation in 10-D on 2 cores); memorizing cannot help on the held-out fold."""

import sys

import numpy as np
from sklearn.model_selection import KFold, cross_val_score
from sklearn.neural_network import MLPClassifier


def load(path, n):
    x = np.loadtxt(path, delimiter=",", ndmin=2, comments=None, skiprows=1 if not _numeric(path) else 0)
    return x[:n]


def _numeric(path):
    with open(path) as f:
        first = f.readline().split(",")[0]
    try:
        float(first)
        return True
    except ValueError:
        return False


def c2st(x, y, seed=1, folds=5, early_stopping=False):
    mean, std = x.mean(0), x.std(0)
    x, y = (x - mean) / std, (y - mean) / std
    data = np.concatenate([x, y])
    target = np.concatenate([np.zeros(len(x)), np.ones(len(y))])
    dim = x.shape[1]
    clf = MLPClassifier(activation="relu", hidden_layer_sizes=(10 * dim, 10 * dim), max_iter=10000, solver="adam", random_state=seed, early_stopping=early_stopping)
    scores = cross_val_score(clf, data, target, cv=KFold(n_splits=folds, shuffle=True, random_state=seed), scoring="accuracy")
    return float(np.mean(scores))


if __name__ == "__main__":
    args = sys.argv[1:]
    n = int(args[args.index("--n") + 1]) if "--n" in args else 10000
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 1
    print(f"{c2st(load(args[0], n), load(args[1], n), seed, early_stopping='--early-stopping' in args):.4f}")
