"""The panel store's on-disk format: version, attribute keys, array names.

Layout (format version 2)::

    alleles        uint8 [n_haplotypes, ceil(n_sites / 8)]  phased 0/1 bit-packed along sites
                                                            (np.packbits, big bit order);
                                                            chunks of all haplotypes x
                                                            chunk_sites sites, Zstd
    sites/position int64 [n_sites]      sites/contig int16 [n_sites] (index into attrs contigs)
    sites/id, sites/ref, sites/alt  str [n_sites]
    sites/af       float32 [n_sites]    allele frequency of ALT
    samples        str [n_samples]      haplotype h belongs to sample h // 2
    windows        int64 [n_windows, 2] half-open site ranges
    checksums.json size and SHA-256 of every other file (see :mod:`vcfstore.store.integrity`)

Chunks run along sites and hold every haplotype (up to ``haplotype_chunk``): similar
haplotypes then sit next to each other and compress together (the README has the figures), and
a window of up to 1028 sites touches at most two chunks.
"""

from __future__ import annotations

# 2: every file checksummed (checksums.json) and every chunk written, empty ones included.
STORE_FORMAT_VERSION = 2
ATTR_KEY = "vcfstore"  # the group attribute holding the store's metadata
PROGRESS_KEY = "vcfstore_build"  # the group attribute holding an unfinished build's progress
SITE_COLUMNS = ("position", "contig", "af", "id", "ref", "alt")
