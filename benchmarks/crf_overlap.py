"""The model and the torch CRF on a CPU: taking turns against overlapping, the CRF refining one batch in a
thread of its own while the model encodes the next (what `segment` now does on a CPU with two cores or
more: ``pipeline.WindowPipeline.crf_beside_model``).

Reads real windows (with the encoder's context) from the 4096 px Dubai mosaic that
``segment_throughput.py`` builds, encodes them with the default encoder against stand-in prototypes (the
CRF's cost does not depend on the labels) and refines them with ``crf_torch.refine_batch`` at the kernels
``segment`` sets for the tiles' 0.3 m (``crf.params_for_resolution``):

- ``model``: the encoder alone, on all of torch's threads;
- ``turns``: encoder then CRF, batch after batch, both on all threads;
- ``overlap``: the encoder on all threads but one in the main thread, the CRF on one torch thread in a
  second thread (torch.set_num_threads there sets that thread's OpenMP team only), a bounded queue of 2
  batches between them.

Modes alternate over ``--repeat`` rounds; windows per second are medians.

    .venv/bin/python benchmarks/crf_overlap.py --root DUBAI [--windows 24] [--batch 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).parent))
from segment_throughput import DUBAI_PIXEL_M, build_mosaic  # noqa: E402

SIZE = 417


def read_windows(image: Path, count: int, context: int) -> list[np.ndarray]:
    """``count`` windows of SIZE px with ``context`` px around them, in [0, 1], row by row from the top left."""
    windows = []
    with rasterio.open(image) as src:
        per_row = (src.width - 2 * context) // SIZE
        for i in range(count):
            row, col = divmod(i, per_row)
            window = Window(col * SIZE, row * SIZE, SIZE + 2 * context, SIZE + 2 * context)
            windows.append(src.read(window=window).astype(np.float32) / 255)
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the Dubai folder: images/, masks/, classes.json")
    parser.add_argument("--windows", type=int, default=24)
    parser.add_argument("--batch", type=int, default=1, help="windows per model call (segment's default on a CPU: 1)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import torch

    from geoproto import crf as crf_module
    from geoproto import crf_torch
    from geoproto.fewshot import class_scores
    from geoproto.models import DEFAULT_ENCODER, build_shipped
    from geoproto.models.runtime import CONTEXT_MARGIN, FeatureExtractor

    image, _ = build_mosaic(4096, args.root)
    windows = read_windows(image, args.windows, CONTEXT_MARGIN)
    batches = [np.stack(windows[i:i + args.batch]) for i in range(0, len(windows), args.batch)]
    extract = FeatureExtractor(build_shipped(DEFAULT_ENCODER)[0], torch.device("cpu"))
    prototypes = torch.from_numpy(np.random.default_rng(0).normal(size=(6, extract.out_channels)).astype(np.float32))
    params = crf_module.params_for_resolution(DUBAI_PIXEL_M)
    inside = slice(CONTEXT_MARGIN, CONTEXT_MARGIN + SIZE)
    threads = torch.get_num_threads()

    def encode(images):
        with torch.inference_mode():
            return class_scores(extract(images, CONTEXT_MARGIN), prototypes, (SIZE, SIZE)).float().softmax(1)

    def refine(images, probabilities):
        return crf_torch.refine_batch(torch.from_numpy(np.ascontiguousarray(images[..., inside, inside])),
                                      probabilities, params)[0].argmax(1)

    def model_only():
        for images in batches:
            encode(images)

    def turns():
        for images in batches:
            refine(images, encode(images))

    def overlap():
        handoff = queue.Queue(maxsize=2)

        def crf_thread():
            torch.set_num_threads(1)
            while (item := handoff.get()) is not None:
                refine(*item)

        worker = threading.Thread(target=crf_thread)
        worker.start()
        torch.set_num_threads(max(1, threads - 1))
        try:
            for images in batches:
                handoff.put((images, encode(images)))
        finally:
            handoff.put(None)
            worker.join()
            torch.set_num_threads(threads)

    modes = {"model": model_only, "turns": turns, "overlap": overlap}
    turns()  # warm-up: the Gaussian lattice's cache, the allocator
    seconds = {name: [] for name in modes}
    for _ in range(args.repeat):
        for name, run in modes.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    print(f"{args.windows} windows of {SIZE} px from the 4096 px mosaic, batch {args.batch}, {threads} torch threads, "
          f"{os.cpu_count()} cores, median of {args.repeat} alternated rounds, load average {os.getloadavg()[0]:.1f}")
    for name, times in seconds.items():
        print(f"  {name:>8}: {args.windows / np.median(times):6.2f} windows/s")
    ratios = [t / o for t, o in zip(seconds["turns"], seconds["overlap"])]
    print(f"  overlap / turns, per round: {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
