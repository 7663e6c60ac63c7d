"""Strict readers for the two raw event formats: every byte accounted for, or the offset named.

CIFAR10-DVS recordings are jAER AEDAT 2.0 ('#' header lines, then big-endian 32-bit address and
timestamp pairs); DVS128 Gesture recordings are AEDAT 3.1 (a header ending in ``#!END-HEADER``,
then packets: a 28-byte header and ``capacity`` events of ``size`` bytes each).

spikingjelly's readers give the arrays the datasets are built from, but they accept a file cut to
its header (no events), stop silently at a packet boundary and fail with a bare ``ValueError`` or
``struct.error`` that names no file when a file is cut mid-event; its AEDAT 3.1 reader also loops
over events in Python (minutes per Gesture recording). These readers return the same arrays
(tested against spikingjelly's on the same files) and raise ``BadRecording`` with the byte offset.
"""
from __future__ import annotations

import struct

import numpy as np


class BadRecording(ValueError):
    """A raw recording that does not parse completely; the message says where and what."""


def aedat2_raw_events(fp, bytes_skip: int = 0, bytes_trim: int = 0, filter_dvs: bool = False,
                      times_first: bool = False):
    """spikingjelly's ``cifar10_dvs.load_raw_events``, strict and with ``np.frombuffer``.

    numpy >= 2 raises on spikingjelly's ``np.fromstring(..., dtype='>u4')``; spikingjelly runs the
    reader in a thread pool that drops exceptions, so without this every recording silently yields
    nothing. Same bytes, same values; a file whose events are not whole 8-byte pairs is refused.
    (Only the defaults are used for CIFAR10-DVS.)
    """
    from spikingjelly.datasets.cifar10_dvs import skip_header
    if bytes_skip or bytes_trim or filter_dvs or times_first:
        raise NotImplementedError("CIFAR10-DVS is read with the default arguments only")
    try:
        start = skip_header(fp)
    except UnicodeDecodeError:
        raise BadRecording("byte 0: not an AEDAT 2.0 recording (its first line is not a '#' header line)") from None
    fp.seek(start)
    data = fp.read()
    end = start + len(data)
    if len(data) % 8:
        whole = start + len(data) // 8 * 8
        raise BadRecording(f"byte {whole}: the last event is cut ({len(data) % 8} of its 8 bytes present; the "
                           f"file ends at byte {end}): the file is truncated")
    words = np.frombuffer(data, dtype=">u4")
    return words[1::2], words[::2]   # timestamp, address


POLARITY_EVENT = 1
_PACKET = struct.Struct("<HHIIIIII")   # type, source, event size, ts offset, ts overflow, capacity, number, valid


def aedat31_header_end(data: bytes) -> int:
    """Offset of the first packet: after the ``#!END-HEADER\\r\\n`` line (spikingjelly's rule)."""
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        line = data[pos:] if nl < 0 else data[pos:nl + 1]
        if not line.startswith(b"#"):
            what = "the file ends" if not line else "a line that is not a '#' header line starts"
            raise BadRecording(f"byte {pos}: {what} before the '#!END-HEADER' line: not a complete AEDAT 3.1 "
                               f"recording")
        if line == b"#!END-HEADER\r\n":
            return pos + len(line)
        if nl < 0:
            raise BadRecording(f"byte {len(data)}: the file ends inside its header: the file is truncated")
        pos = nl + 1


def load_aedat31(path) -> dict:
    """An AEDAT 3.1 recording as ``{'t', 'x', 'y', 'p'}`` int64 arrays, like spikingjelly's
    ``load_aedat_v3``: all ``capacity`` events of every polarity packet, ``t`` with the packet's
    timestamp overflow, other packet types skipped. Vectorised per packet."""
    with open(path, "rb") as f:
        data = f.read()
    pos = aedat31_header_end(data)
    aer, ts = [], []
    while pos < len(data):
        if len(data) - pos < _PACKET.size:
            raise BadRecording(f"byte {pos}: the file ends {len(data) - pos} bytes into a 28-byte packet header: "
                               f"the file is truncated")
        kind, _, size, _, overflow, capacity, _, _ = _PACKET.unpack_from(data, pos)
        body = pos + _PACKET.size
        length = capacity * size
        if len(data) - body < length:
            raise BadRecording(f"byte {pos}: the packet there declares {capacity} events of {size} bytes, but the "
                               f"file ends {len(data) - body} bytes into them (at byte {len(data)}): the file is "
                               f"truncated")
        if kind == POLARITY_EVENT and capacity:
            if size < 8:
                raise BadRecording(f"byte {pos}: a polarity packet with {size}-byte events (8 or more expected)")
            words = [np.ndarray((capacity,), dtype="<u4", buffer=data, offset=body + k, strides=(size,))
                     for k in (0, 4)]
            aer.append(words[0].astype(np.int64))
            ts.append(words[1].astype(np.int64) | (overflow << 31))
        pos = body + length
    aer = np.concatenate(aer) if aer else np.zeros(0, np.int64)
    t = np.concatenate(ts) if ts else np.zeros(0, np.int64)
    return {"t": t, "x": (aer >> 17) & 0x7FFF, "y": (aer >> 2) & 0x7FFF, "p": (aer >> 1) & 1}
