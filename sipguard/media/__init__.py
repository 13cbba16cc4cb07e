"""Media anchoring: rtpengine's ng control protocol (bencode, the sans-IO client)."""
