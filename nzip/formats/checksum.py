"""The one checksum every nzip format uses: XXH3-64 (fast enough to check on every read)."""

import xxhash


def xxh3(data) -> int:
    return xxhash.xxh3_64_intdigest(data)


def hasher():
    return xxhash.xxh3_64()
