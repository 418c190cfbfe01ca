"""`redy dashboard`: a live web page of a grid, served on a local HTTP port.

`model` is the pure part (what the page shows, from the retained topics); `server` feeds it from
the nodes' brokers and serves the page, its JSON and a server-sent event stream.
"""
