"""The HTTP request line (`$request`, `%r`): method, target, protocol."""

from __future__ import annotations


def split_request(request: str) -> tuple[str, str, str]:
    """`GET /a?b HTTP/1.1` -> ("GET", "/a?b", "HTTP/1.1"); odd lines keep what they have.

    Scanners send garbage (`-`, TLS handshakes, bare paths); those still parse as records with an
    empty or odd method, which the page-view filter then rejects: the line is not lost or miscounted.
    """
    parts = request.split(" ")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1], ""
    if len(parts) > 3:
        # A target with raw spaces (some servers log them unescaped): method first, protocol last.
        return parts[0], " ".join(parts[1:-1]), parts[-1]
    return "", request if request != "-" else "", ""


def split_target(target: str) -> tuple[str, str]:
    """`/a/b?x=1#f` -> ("/a/b", "x=1"); an absolute-form target (`https://h/p?q`) loses its
    scheme and host (`/p`, `q`); a fragment is dropped wherever it stands."""
    if target.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        query_at = rest.find("?")
        if slash < 0 or 0 <= query_at < slash:
            target = "/" + (rest[query_at:] if query_at >= 0 else "")
        else:
            target = rest[slash:]
    hash_at = target.find("#")
    if hash_at >= 0:
        target = target[:hash_at]
    path, _, query = target.partition("?")
    return path, query
