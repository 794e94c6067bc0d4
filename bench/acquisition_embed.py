"""Embed the benchmark corpora into bench/.cache/ once, so later runs only read the cache.

Usage: .venv/bin/python bench/acquisition_embed.py [pandalm mtbench math]
"""

from __future__ import annotations

import logging
import sys
import time

from acquisition_common import CORPORA

from engine.simulator_corpus import embed_with_cache, read_corpus


def main(names: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in names or list(CORPORA):
        corpus = CORPORA[name]
        started = time.perf_counter()
        texts = read_corpus(corpus.outputs).texts
        vectors = embed_with_cache(texts, corpus.cache, truncate=corpus.truncate, tail_chars=corpus.tail_chars)
        logging.info("%s: %d responses, %s, %.0f s", name, len(texts), vectors.shape, time.perf_counter() - started)


if __name__ == "__main__":
    main(sys.argv[1:])
