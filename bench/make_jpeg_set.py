"""Generate the synthetic ImageNet-like JPEG set, offline (``sslit.sources.build_jpeg_set``).

Fashion-MNIST images (Debian's ``dataset-fashion-mnist``) upsampled to ~400x350,
coloured, textured and noised, ~100 KB JPEGs at quality 90, written as the tfds
``array_record`` data set ``sslit_jpeg_set`` in ``--data-dir`` and, with
``--folder``, as the same files in ``<folder>/<split>/<class>/<index>.jpg``.
Read them with ``sslit.data.load("jpeg_set", split, data_dir=...)`` or
``load("folder:<folder>", split, image_size=...)``.

Usage: ``python bench/make_jpeg_set.py --data-dir /tmp/jpeg --folder /tmp/jpeg/folder``
(10,000 train + 1,000 test images by default; ``--num-train 64`` for a tiny set).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", required=True, help="the tfds data dir to write into")
  parser.add_argument("--folder", default=None, help="also write an image folder here")
  parser.add_argument("--num-train", type=int, default=10_000)
  parser.add_argument("--num-test", type=int, default=1_000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  from sslit import sources
  t = time.perf_counter()
  builder = sources.build_jpeg_set(args.data_dir, num_train=args.num_train,
                                   num_test=args.num_test, folder=args.folder,
                                   seed=args.seed)
  total = sum(os.path.getsize(os.path.join(builder.data_dir, f))
              for f in os.listdir(builder.data_dir) if ".array_record" in f)
  n = args.num_train + args.num_test
  print(f"{n} JPEGs in {builder.data_dir} ({total / n / 1e3:.0f} KB per image with "
        f"the record overhead){' and ' + args.folder if args.folder else ''}: "
        f"{time.perf_counter() - t:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
