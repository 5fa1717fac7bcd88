"""The gateway's own read-only calls to Whazing, beside the traffic it watches: the login the
observer, the catch-up and the media download share, and the media download itself."""
