#!/usr/bin/env python3
"""Convert Fashion-MNIST IDX files (Debian package `dataset-fashion-mnist`) to a folder of PNGs.

Standard library only. Usage:
    python3 scripts/fashion_mnist_to_png.py [--count 5000] [--split train|t10k]
        [--src /usr/share/datasets/fashion-mnist] [--out data/fashion-mnist]
The images are written without labels (a CelebA-style flat folder): img_NNNNN.png, 28x28 gray.
"""
import argparse, gzip, os, struct, zlib


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 2051:
            raise SystemExit(f"{path}: not an IDX image file (magic {magic})")
        data = f.read(n * rows * cols)
    return n, rows, cols, data


def png_gray(width, height, pixels):
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--split", default="train", choices=["train", "t10k"])
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--out", default="data/fashion-mnist")
    a = p.parse_args()
    n, rows, cols, data = read_idx_images(os.path.join(a.src, f"{a.split}-images-idx3-ubyte.gz"))
    os.makedirs(a.out, exist_ok=True)
    count = min(a.count, n)
    size = rows * cols
    for i in range(count):
        with open(os.path.join(a.out, f"img_{i:05d}.png"), "wb") as f:
            f.write(png_gray(cols, rows, data[i * size:(i + 1) * size]))
    print(f"wrote {count} {rows}x{cols} images to {a.out}")


if __name__ == "__main__":
    main()
