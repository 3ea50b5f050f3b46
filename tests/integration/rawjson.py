"""A tiny raw JSON scanner: finds the byte spans of values without decoding them.

Python's json module would turn an id of 1e400 into inf and -0 into 0, so
id checks compare the exact bytes the daemon wrote, located with this.
It assumes valid JSON (the daemon's replies) and raises ValueError otherwise.
"""

_WS = b" \t\r\n"


def _skip_ws(buf: bytes, i: int) -> int:
    while i < len(buf) and buf[i] in _WS:
        i += 1
    return i


def _skip_string(buf: bytes, i: int) -> int:
    """i is at the opening quote; returns the index after the closing quote."""
    i += 1
    while i < len(buf):
        c = buf[i]
        if c == 0x5C:  # backslash: skip the escaped byte
            i += 2
        elif c == 0x22:
            return i + 1
        else:
            i += 1
    raise ValueError("unterminated string")


def skip_value(buf: bytes, i: int) -> int:
    """Returns the index just after the JSON value starting at buf[i] (no leading space)."""
    if i >= len(buf):
        raise ValueError("value expected at end of input")
    c = buf[i]
    if c == 0x22:
        return _skip_string(buf, i)
    if c in b"[{":
        depth = 0
        while i < len(buf):
            c = buf[i]
            if c == 0x22:
                i = _skip_string(buf, i)
                continue
            if c in b"[{":
                depth += 1
            elif c in b"]}":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        raise ValueError("unterminated container")
    j = i
    while j < len(buf) and buf[j] not in b",]} \t\r\n":
        j += 1
    if j == i:
        raise ValueError(f"unexpected byte {buf[i:i+1]!r} at {i}")
    return j


def object_members(buf: bytes) -> dict:
    """Raw member values of the top-level object in buf: {key: value_bytes}."""
    i = _skip_ws(buf, 0)
    if buf[i : i + 1] != b"{":
        raise ValueError(f"not an object: {buf[:60]!r}")
    out = {}
    i = _skip_ws(buf, i + 1)
    if buf[i : i + 1] == b"}":
        return out
    while True:
        if buf[i : i + 1] != b'"':
            raise ValueError(f"key expected at {i}")
        k_end = _skip_string(buf, i)
        key = buf[i + 1 : k_end - 1].decode()
        i = _skip_ws(buf, k_end)
        if buf[i : i + 1] != b":":
            raise ValueError(f"':' expected at {i}")
        v_start = _skip_ws(buf, i + 1)
        v_end = skip_value(buf, v_start)
        out[key] = buf[v_start:v_end]
        i = _skip_ws(buf, v_end)
        if buf[i : i + 1] == b"}":
            return out
        if buf[i : i + 1] != b",":
            raise ValueError(f"',' or '}}' expected at {i}")
        i = _skip_ws(buf, i + 1)


def array_elements(buf: bytes) -> list:
    """Raw elements of the top-level array in buf."""
    i = _skip_ws(buf, 0)
    if buf[i : i + 1] != b"[":
        raise ValueError(f"not an array: {buf[:60]!r}")
    out = []
    i = _skip_ws(buf, i + 1)
    if buf[i : i + 1] == b"]":
        return out
    while True:
        end = skip_value(buf, i)
        out.append(buf[i:end])
        i = _skip_ws(buf, end)
        if buf[i : i + 1] == b"]":
            return out
        if buf[i : i + 1] != b",":
            raise ValueError(f"',' or ']' expected at {i}")
        i = _skip_ws(buf, i + 1)
