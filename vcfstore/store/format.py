"""The panel store's on-disk format: version, attribute keys, array names.

Layout (format version 3)::

    alleles        uint8 [n_haplotypes, ceil(n_sites / 8)]  phased 0/1 bit-packed along sites
                                                            (np.packbits, big bit order); Zarr v3
                                                            shards of every haplotype x chunk_sites
                                                            sites, each split into inner chunks of
                                                            haplotype_chunk haplotypes (one chunk
                                                            up to twice that many), Zstd; the
                                                            shard index (at the end, CRC32C) gives
                                                            each inner chunk's bytes
    sites/position int64 [n_sites]      sites/contig int16 [n_sites] (index into attrs contigs)
    sites/id, sites/ref, sites/alt  str [n_sites]
    sites/af       float32 [n_sites]    allele frequency of ALT
    samples        str [n_samples]      haplotype h belongs to sample h // 2
    windows        int64 [n_windows, 2] half-open site ranges
    checksums.json size and SHA-256 of every other file, and of each shard's index and inner
                   chunks (see :mod:`vcfstore.store.integrity`)

A window of up to 1028 sites touches at most two shards. Reading all haplotypes of a window
decodes those shards whole; reading some haplotypes decodes only their inner chunks (at
2048 sites and 1024 haplotypes, 256 KB each), so a 16-row gather costs the same at 2,000 or
1,000,000 haplotypes. Taller inner chunks compress better (similar haplotypes compress
together): the README has the measured trade-off.

Format 2 (still read): ``alleles`` in plain chunks of up to ``haplotype_chunk`` haplotypes x
``chunk_sites`` sites, one file each; ``checksums.json`` version 1.
"""

from __future__ import annotations

# 2: every file checksummed (checksums.json) and every chunk written, empty ones included.
# 3: alleles in shards of every haplotype, inner chunks along haplotypes; shard pieces checksummed.
STORE_FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (2, 3)
ATTR_KEY = "vcfstore"  # the group attribute holding the store's metadata
PROGRESS_KEY = "vcfstore_build"  # the group attribute holding an unfinished build's progress
SITE_COLUMNS = ("position", "contig", "af", "id", "ref", "alt")
