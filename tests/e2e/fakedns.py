"""An upstream resolver for the e2e tests, run in a client namespace of the test's own: answers
`ext.example.` with one A record and NXDOMAIN for everything else.

    python fakedns.py ADDR PORT
"""

from __future__ import annotations

import socket
import sys

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

EXTERNAL = "ext.example."
EXTERNAL_ADDR = "198.51.100.77"


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((sys.argv[1], int(sys.argv[2])))
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            q = DNSRecord.parse(data)
        except Exception:
            continue
        reply = q.reply()
        if str(q.q.qname).lower() == EXTERNAL and q.q.qtype == QTYPE.A:
            reply.add_answer(RR(EXTERNAL, QTYPE.A, rdata=A(EXTERNAL_ADDR), ttl=30))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        sock.sendto(reply.pack(), peer)


if __name__ == "__main__":
    main()
