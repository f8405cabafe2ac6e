"""The control plane: HTTP/JSON over a Unix socket, authorized by peer credentials."""
