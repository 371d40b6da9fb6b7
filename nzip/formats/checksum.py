"""The checksums every nzip format uses: XXH3-64 on stored bytes (fast enough to check on
every read), XXH3-128 on a container tensor's original bytes, where it also serves as the
content address that incremental saves match against."""

import xxhash


def xxh3(data) -> int:
    return xxhash.xxh3_64_intdigest(data)


def hasher():
    return xxhash.xxh3_64()


def content_hash(data) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def raw_hash_matches(data, expected: str) -> bool:
    """Checks a stored hex digest of either width: 16 digits XXH3-64, 32 digits XXH3-128."""
    got = content_hash(data) if len(expected) == 32 else f"{xxh3(data):016x}"
    return got == expected
