"""The manager's live web view (`--ui-listen`): an HTTPS page of nodes, tasks, services and
networks that updates itself from a server-sent event stream.

token.py (short-lived access tokens), snapshot.py (the page's data from the leader's state),
http.py (a small strict HTTP/1.1 handler and the auth decisions), server.py (the TLS listener
and the event hub) and assets.py (the page: HTML, CSS, JS, all served from here, no CDN).
"""
