"""Every error nzip raises on purpose. All are ValueErrors, so callers may catch broadly."""


class NzipError(ValueError):
    """Base class of nzip's errors."""


class UnknownCodecError(NzipError):
    """No codec is registered under that name."""


class UnsupportedDtypeError(NzipError):
    """The codec cannot encode this dtype (e.g. dfloat11 is bf16 only)."""


class BadParameterError(NzipError):
    """A codec or command got a parameter outside its range."""


class FormatError(NzipError):
    """The bytes are not an nzip object: wrong magic, or a malformed header."""


class VersionError(FormatError):
    """The file was written by a newer format version than this nzip reads."""


class TruncatedError(FormatError):
    """The data ends before the format says it should."""


class ChecksumError(FormatError):
    """A checksum does not match: the bytes were corrupted after writing."""


class CorruptDataError(FormatError):
    """The payload is internally inconsistent although its framing looked fine."""
