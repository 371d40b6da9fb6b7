"""Helpers for tests that forge frames: change a payload and re-seal the checksum, so that
the codec's own validation, not the checksum, has to catch the damage."""

from nzip.formats import frame as frame_format


def reseal(frame: bytes, edit_payload) -> bytes:
    header, payload = frame_format.unpack(frame)
    header = dict(header)
    header.pop("payload_size", None)
    return frame_format.pack(header, edit_payload(bytes(payload)))
